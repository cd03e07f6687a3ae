-- claim.lua: take the lease of a payload BLMOVE gave us, and send `started`.
--
-- KEYS[1] {ns}:job:<id>
-- KEYS[2] {ns}:active:<worker>
-- KEYS[3] {ns}:cancel
-- KEYS[4] {ns}:log:<id>
-- KEYS[5] {ns}:progress:<id>
-- KEYS[6] {ns}:events
-- ARGV[1] worker id
-- ARGV[2] payload bytes
-- ARGV[3] now (unix seconds): the claim's started_at
-- ARGV[4] job id
-- ARGV[5] the started event, with placeholders for seq and attempt
-- ARGV[6] offset of the seq placeholder in ARGV[5]
-- ARGV[7] offset of the attempt placeholder in ARGV[5]
-- ARGV[8] log_maxlen
--
-- Returns {verdict, attempt, last seq}: 'gone' (the payload left our
-- active list), 'cancelled' (lease taken, a cancel is asked: no event),
-- 'ok' (lease taken, `started` sent).  Sends `started`.
--
-- The same call again (sent anew because Redis's answer was lost) finds
-- the lease already taken with its `now`, and answers as the first did.
if not redis.call('LPOS', KEYS[2], ARGV[2]) then return {'gone', 0, 0} end
local seq = lastseq(KEYS[4])
local h = redis.call('HMGET', KEYS[1], 'state', 'worker', 'started_at', 'attempt')
if h[1] == 'running' and h[2] == ARGV[1] and h[3] == ARGV[3] then
  local c = redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1
  return {c and 'cancelled' or 'ok', tonumber(h[4]), seq}
end
local att = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'finished_at', 'exit_code', 'error', 'phase')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[4])
if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then return {'cancelled', att, seq} end
seq = seq + 1
local ev = patch32(patch32(ARGV[5], tonumber(ARGV[6]), seq), tonumber(ARGV[7]), att)
redis.call('PUBLISH', KEYS[5], ev)
redis.call('PUBLISH', KEYS[6], ev)
xadd(KEYS[4], ARGV[8], seq, 'started', ev)
return {'ok', att, seq}
