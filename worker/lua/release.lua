-- release.lua: put every payload of our active list that we do not hold
-- back on the queue's right end (taken next).
--
-- KEYS[1] {ns}:active:<worker>
-- KEYS[2] {ns}:queue
-- KEYS[3] {ns}:worker:<worker>
-- KEYS[4] {ns}:workers
-- ARGV[1] key prefix "{ns}:"
-- ARGV[2] now
-- ARGV[3] log_maxlen
-- ARGV[4] reason of the requeued events ('drained', 'recovered')
-- ARGV[5] '1' to also forget our heartbeat (at exit)
-- ARGV[6..] the payloads we still hold, each as "<length>:<sha1 hex>"
--
-- Returns how many payloads went back.  Sends `requeued` for each whose
-- job's record it owns; another payload with that id (a duplicate) only
-- goes back to the queue, where a claim dead-letters it.
local P = ARGV[1]
local keep = {}
for i = 6, #ARGV do keep[ARGV[i]] = (keep[ARGV[i]] or 0) + 1 end
local me = string.sub(KEYS[1], #P + 8)
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local moved = 0
for i = #items, 1, -1 do
  local p = items[i]
  local t = #p .. ':' .. redis.sha1hex(p)
  if keep[t] and keep[t] > 0 then
    keep[t] = keep[t] - 1
  else
    redis.call('LREM', KEYS[1], -1, p)
    redis.call('RPUSH', KEYS[2], p)
    local id = payload_id(p)
    -- A further copy of a payload we hold (keep[t] was given, now used up)
    -- is a duplicate: moved back untouched, for the next claim to refuse,
    -- never requeueing the job its twin is running.
    if id and keep[t] == nil and owns(P, id, p, me) then
      local jk = P .. 'job:' .. id
      redis.call('HSET', jk, 'state', 'queued')
      redis.call('HINCRBY', jk, 'requeues', 1)
      local h = redis.call('HMGET', jk, 'attempt', 'seq')
      event(P, id, 'requeued', {reason = ARGV[4]}, ARGV[3], tonumber(ARGV[2]), tonumber(h[1] or '0'),
        h[2])
    end
    moved = moved + 1
  end
end
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], string.sub(KEYS[3], #P + 8))
  redis.call('HDEL', P .. 'hosts', string.sub(KEYS[3], #P + 8))
end
return moved
