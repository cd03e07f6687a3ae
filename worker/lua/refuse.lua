-- refuse.lua: dead-letter a payload the worker will not run.
--
-- KEYS[1] {ns}:dead
-- KEYS[2] {ns}:active:<worker>
-- ARGV[1] the payload's length
-- ARGV[2] its sha1 (hex)
-- ARGV[3] job id, or '' when the payload had no valid one
-- ARGV[4] error
-- ARGV[5] key prefix "{ns}:"
-- ARGV[6] now
-- ARGV[7] log_maxlen
-- ARGV[8] reason
-- ARGV[9] worker id
-- ARGV[10] dead_maxlen ('0': untrimmed)
-- ARGV[11] the payload's sha256 (hex) when it is over max_payload, else ''
--
-- Returns 1, or 0 when the payload is no longer in our active list (a
-- replay of a call that was done: nothing is pushed twice).  Sends `dead`
-- when the id was readable and the payload owns the job's record.
--
-- The worker does not send the payload back: it is found in our active
-- list by length and sha1, so a refusal works for any payload Redis
-- accepted, and an entry over max_payload keeps only its length, sha256
-- and first 256 bytes.  A record the payload does not own (a running or
-- finished job's, a queued one under another digest) is left alone: a
-- hostile duplicate id must not kill a real build's record.
local n = tonumber(ARGV[1])
local p
for i = 0, redis.call('LLEN', KEYS[2]) - 1 do
  local item = redis.call('LINDEX', KEYS[2], i)
  if item and #item == n and redis.sha1hex(item) == ARGV[2] then
    p = item
    break
  end
end
if not p then return 0 end
redis.call('LREM', KEYS[2], 1, p)
local id = ARGV[3] ~= '' and ARGV[3] or nil
local now = tonumber(ARGV[6])
deadpush(KEYS[1], deadentry(ARGV[8], ARGV[4], p, id, ARGV[9], now, ARGV[11] ~= '' and ARGV[11] or nil),
  ARGV[10])
if id and owns(ARGV[5], id, p, nil) then
  local jk = ARGV[5] .. 'job:' .. id
  redis.call('HSET', jk, 'state', 'dead', 'error', ARGV[4], 'finished_at', ARGV[6],
    'worker', ARGV[9], 'digest', ARGV[2])
  local h = redis.call('HMGET', jk, 'attempt', 'seq')
  event(ARGV[5], id, 'dead', {reason = ARGV[8], error = ARGV[4]}, ARGV[7], now, tonumber(h[1] or '0'),
    h[2])
end
return 1
