-- submit.lua: write a job's record and queue its payload in one step.
--
--   KEYS[1] {ns}:job:<id>   KEYS[2] {ns}:queue
--   KEYS[3] {ns}:result:<id>   KEYS[4] {ns}:log:<id>
--   ARGV[1] payload bytes   ARGV[2] enqueued_at (unix seconds)
--   ARGV[3] mode: "new" or "rerun"
--
-- Returns {"ok", digest}, {"exists", state} (mode new: the job hash or
-- its result is still there; state is the hash's, or "finished" when
-- only the result remains) or {"busy", state} (mode rerun: the job is
-- queued or running).
--
-- The hash's `digest` (lowercase hex SHA-1 of the exact payload bytes)
-- binds the record to one payload: a worker dead-letters, as
-- duplicate_id, a payload whose digest does not match the record it
-- claims, so a second producer re-using an id cannot take over (or
-- mix its state into) the first job's record.
--
-- A rerun keeps the log stream, so a new attempt's seq goes on after
-- the last one (and `attempt` keeps counting); it drops the old result
-- and the fields of the previous run's end.
local payload, now, mode = ARGV[1], ARGV[2], ARGV[3]
local state = redis.call('HGET', KEYS[1], 'state')

if mode == 'new' then
  if state then return {'exists', state} end
  if redis.call('EXISTS', KEYS[3]) == 1 then return {'exists', 'finished'} end
elseif mode == 'rerun' then
  if state == 'queued' or state == 'running' then return {'busy', state} end
  if state then
    local final = {succeeded = true, failed = true, timed_out = true, oom_killed = true,
                   cancelled = true, error = true, dead = true}
    -- A state this script does not know is no final one: leave it be.
    if not final[state] then return {'busy', state} end
  end
  redis.call('DEL', KEYS[3])
  redis.call('HDEL', KEYS[1], 'finished_at', 'exit_code', 'error', 'phase', 'lost',
             'requeues', 'last_error')
else
  return redis.error_reply('submit.lua: mode must be new or rerun, not ' .. tostring(mode))
end

local digest = redis.sha1hex(payload)
redis.call('HSET', KEYS[1], 'state', 'queued', 'digest', digest, 'enqueued_at', now)
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[4])
redis.call('LPUSH', KEYS[2], payload)
return {'ok', digest}
