-- submit.lua: queue a job, or re-run a finished one (PROTOCOL.md "Submitting").
-- Producers EVAL this exact file: enqueue embeds it, the backend reads it.
--
-- KEYS[1] {ns}:job:<id>
-- KEYS[2] {ns}:queue
-- KEYS[3] {ns}:result:<id>
-- KEYS[4] {ns}:log:<id>
-- ARGV[1] payload bytes (the msgpack job)
-- ARGV[2] enqueued_at (unix seconds as a string)
-- ARGV[3] mode: "new" or "rerun"
--
-- Returns {"ok", digest} when the job was queued (digest: the lowercase
-- hex SHA-1 of ARGV[1], stored in the job hash); {"exists", state} in
-- mode new when the job hash or the result list exists (state: the
-- hash's, or "finished" when only the result remains); {"busy", state}
-- in mode rerun when the job is queued or running.  Sends no event.
--
-- new: the id must be unknown.  rerun, the one way to run an id again:
-- allowed once the job is in a final state, or gone; the result goes,
-- the old outcome's fields go, and the hash and the log stream lose
-- their expiry and stay, so `seq` and `attempt` keep counting.  Both
-- drop a cancel left for the id in {ns}:cancel (it would cancel the new
-- run at once), set state=queued, digest and enqueued_at, and LPUSH.
local final = {succeeded = true, failed = true, timed_out = true, oom_killed = true,
  cancelled = true, error = true, dead = true}
local state = redis.call('HGET', KEYS[1], 'state')
if ARGV[3] == 'new' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', state or 'known'} end
  if redis.call('EXISTS', KEYS[3]) == 1 then return {'exists', 'finished'} end
elseif ARGV[3] == 'rerun' then
  if state and not final[state] then return {'busy', state} end
  redis.call('DEL', KEYS[3])
  redis.call('HDEL', KEYS[1], 'finished_at', 'exit_code', 'error', 'phase', 'lost', 'requeues',
    'last_error')
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[4])
else
  return redis.error_reply('submit.lua: ARGV[3] must be "new" or "rerun"')
end
local prefix = string.sub(KEYS[2], 1, #KEYS[2] - #'queue')
redis.call('HDEL', prefix .. 'cancel', string.sub(KEYS[1], #prefix + #'job:' + 1))
local digest = redis.sha1hex(ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'queued', 'digest', digest, 'enqueued_at', ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[1])
return {'ok', digest}
