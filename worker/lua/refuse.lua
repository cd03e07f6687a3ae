-- refuse.lua: dead-letter a payload the worker will not run.
--
-- KEYS[1] {ns}:dead
-- KEYS[2] {ns}:active:<worker>
-- ARGV[1] payload bytes
-- ARGV[2] the dead entry (msgpack)
-- ARGV[3] job id, or '' when the payload had no valid one
-- ARGV[4] error
-- ARGV[5] key prefix "{ns}:"
-- ARGV[6] now
-- ARGV[7] log_maxlen
-- ARGV[8] reason
-- ARGV[9] worker id
-- ARGV[10] dead_maxlen ('0': untrimmed)
--
-- Returns 1.  Sends `dead` when the id was readable.
--
-- A job hash that another worker is running is left alone: a hostile
-- duplicate id must not kill a real build's record.
redis.call('LREM', KEYS[2], 1, ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[2])
if ARGV[10] ~= '0' then redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[10]) - 1) end
if ARGV[3] ~= '' then
  local jk = ARGV[5] .. 'job:' .. ARGV[3]
  if redis.call('HGET', jk, 'state') ~= 'running' then
    redis.call('HSET', jk, 'state', 'dead', 'error', ARGV[4], 'finished_at', ARGV[6],
      'worker', ARGV[9])
    event(ARGV[5], ARGV[3], 'dead', {reason = ARGV[8], error = ARGV[4]}, ARGV[7],
      tonumber(ARGV[6]), tonumber(redis.call('HGET', jk, 'attempt') or '0'))
  end
end
return 1
