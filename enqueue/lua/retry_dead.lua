-- retry_dead.lua: put one dead letter's payload back on the queue.
--
-- KEYS[1] {ns}:dead
-- KEYS[2] {ns}:queue
-- KEYS[3] {ns}:job:<id>     (absent when the payload had no valid id)
-- KEYS[4] {ns}:result:<id>  (with KEYS[3])
-- KEYS[5] {ns}:log:<id>     (with KEYS[3])
-- ARGV[1] the dead entry, byte for byte
-- ARGV[2] its payload
-- ARGV[3] now
-- ARGV[4] the entry's error (kept as last_error)
--
-- Returns 1 (requeued), 0 (the entry is gone: another retry took it),
-- -1 (the job is queued or running: a duplicate refused while it ran must
-- not reset it), -2 (another payload owns the record: its digest differs,
-- or only its result remains).  Sends no event.
--
-- The entry is removed by value, so an index that shifted meanwhile does
-- not matter and two operators retrying it queue it once.  The record
-- is reset as a re-run: state=queued with the payload's digest, the
-- result gone, the stream kept (seq goes on).
local digest = redis.sha1hex(ARGV[2])
if KEYS[3] then
  local h = redis.call('HMGET', KEYS[3], 'state', 'digest')
  if h[1] == 'queued' or h[1] == 'running' then return -1 end
  if h[2] and h[2] ~= digest then return -2 end
  if not h[1] and not h[2] and redis.call('EXISTS', KEYS[4]) == 1 then return -2 end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
if KEYS[3] then
  redis.call('DEL', KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[3], 'state', 'queued', 'digest', digest, 'enqueued_at', ARGV[3],
    'last_error', ARGV[4])
  redis.call('PERSIST', KEYS[5])
end
return 1
