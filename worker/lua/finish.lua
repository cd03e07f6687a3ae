-- finish.lua: record a job's one result (or schedule its retry) under the lease.
--
-- KEYS[1] {ns}:job:<id>
-- KEYS[2] {ns}:active:<worker>
-- KEYS[3] {ns}:results
-- KEYS[4] {ns}:result:<id>
-- KEYS[5] {ns}:progress:<id>
-- KEYS[6] {ns}:events
-- KEYS[7] {ns}:log:<id>
-- KEYS[8] {ns}:cancel
-- KEYS[9] {ns}:delayed
-- ARGV[1] worker id
-- ARGV[2] attempt (our lease)
-- ARGV[3] payload bytes
-- ARGV[4] the result (msgpack)
-- ARGV[5] the finished event
-- ARGV[6] its seq (also the requeued event's)
-- ARGV[7] status
-- ARGV[8] exit_code
-- ARGV[9] finished_at
-- ARGV[10] error
-- ARGV[11] result_ttl
-- ARGV[12] log_maxlen
-- ARGV[13] job id
-- ARGV[14] when the retry is due, or '0' for a result
-- ARGV[15] the requeued event (a retry)
--
-- Returns 'ok' (result recorded, `finished` sent), 'retry' (payload in
-- {ns}:delayed, `requeued` sent), 'dup' (our own call replayed: already
-- done), 'stale' (another worker holds the job: nothing done).
local h = redis.call('HMGET', KEYS[1], 'worker', 'attempt', 'state')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return 'stale' end
local retry = ARGV[14] ~= '0'
if h[3] ~= 'running' then
  if (not retry and h[3] == ARGV[7]) or (retry and h[3] == 'queued' and
      redis.call('ZSCORE', KEYS[9], ARGV[3])) then return 'dup' end
  return 'stale'
end
if redis.call('LREM', KEYS[2], 1, ARGV[3]) == 0 then return 'stale' end
if retry then
  redis.call('ZADD', KEYS[9], ARGV[14], ARGV[3])
  redis.call('HSET', KEYS[1], 'state', 'queued', 'last_error', ARGV[10], 'seq', ARGV[6])
  xadd(KEYS[7], ARGV[12], ARGV[6], 'requeued', ARGV[15])
  redis.call('PUBLISH', KEYS[5], ARGV[15])
  redis.call('PUBLISH', KEYS[6], ARGV[15])
  return 'retry'
end
redis.call('HSET', KEYS[1], 'state', ARGV[7], 'finished_at', ARGV[9], 'exit_code', ARGV[8],
  'error', ARGV[10], 'seq', ARGV[6])
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[11])
redis.call('HDEL', KEYS[8], ARGV[13])
xadd(KEYS[7], ARGV[12], ARGV[6], 'finished', ARGV[5])
redis.call('PUBLISH', KEYS[5], ARGV[5])
redis.call('PUBLISH', KEYS[6], ARGV[5])
redis.call('EXPIRE', KEYS[7], ARGV[11])
redis.call('EXPIRE', KEYS[1], ARGV[11])
return 'ok'
