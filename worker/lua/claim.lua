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
-- ARGV[9] dead_maxlen ('0': untrimmed)
--
-- Returns {verdict, attempt, last seq}: 'gone' (the payload left our
-- active list), 'cancelled' (lease taken, a cancel is asked: no event),
-- 'ok' (lease taken, `started` sent), or {'duplicate', 0, 0, error}: the
-- id belongs to another record; the payload went from our active list to
-- {ns}:dead (reason duplicate_id) and nothing of that job was touched.
-- Sends `started` (and nothing for a duplicate).  {ns}:result:<id> and
-- {ns}:dead are derived from KEYS[6]'s "{ns}:" (the same hash tag).
--
-- The same call again (sent anew because Redis's answer was lost) finds
-- the lease already taken with its `now`, and answers as the first did.
--
-- The payload whose sha1 is the record's `digest` owns it.  A requeue of
-- the same job (reaper, drain, retry) finds state=queued and its own
-- digest; a second payload with the id finds another digest, or a record
-- that is running or final, or only a result: a duplicate.  A record
-- without digest (a producer that sets none) is taken only when queued,
-- and no record at all (a plain LPUSH) is made here; both bind the digest.
--
-- Cost: the common claim (a queued record of a fresh job) is seven
-- commands.  The seq to continue from is the job hash's `seq` (every
-- script that sends an event but emit writes it), so the stream is not
-- read unless it turns out to be ahead (prelude's xnext).  A record that
-- went final before (finished_at, or a phase, error or exit_code left)
-- loses those fields and its expiry, and so does its stream; a fresh
-- record has neither, and no command is spent on them.
if not redis.call('LPOS', KEYS[2], ARGV[2]) then return {'gone', 0, 0} end
local P = string.sub(KEYS[6], 1, #KEYS[6] - #'events')
local h = redis.call('HMGET', KEYS[1], 'state', 'worker', 'started_at', 'attempt', 'digest', 'seq',
  'finished_at', 'phase', 'error', 'exit_code')
local digest = redis.sha1hex(ARGV[2])
if h[1] == 'running' and h[2] == ARGV[1] and h[3] == ARGV[3] and h[5] == digest then
  local c = redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1
  return {c and 'cancelled' or 'ok', tonumber(h[4]), tonumber(h[6] or '0')}
end
local dup
if h[5] and h[5] ~= digest then
  dup = 'id ' .. ARGV[4] .. ' is already ' .. (h[1] or 'known') .. ' under another payload'
elseif h[1] and h[1] ~= 'queued' then
  dup = 'id ' .. ARGV[4] .. ' is already ' .. h[1] ..
    (h[5] and ' (this is a second copy of its payload)' or ' under another payload')
elseif not h[1] and redis.call('EXISTS', P .. 'result:' .. ARGV[4]) == 1 then
  dup = 'id ' .. ARGV[4] .. ' is already finished under another payload'
end
if dup then
  redis.call('LREM', KEYS[2], 1, ARGV[2])
  deadpush(P .. 'dead', deadentry('duplicate_id', dup, ARGV[2], ARGV[4], ARGV[1], tonumber(ARGV[3])),
    ARGV[9])
  return {'duplicate', 0, 0, dup}
end
local att = tonumber(h[4] or '0') + 1
local seq = tonumber(h[6] or '0')
if h[7] or h[8] or h[9] or h[10] then
  redis.call('HDEL', KEYS[1], 'finished_at', 'exit_code', 'error', 'phase')
end
if h[7] or not h[1] then
  -- A record that went final had an expiry, and so had its stream.
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[4])
end
local cancelled = redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1
if cancelled and not h[6] then
  seq = lastseq(KEYS[4])  -- no started event to find it: a record without `seq` reads the stream
elseif not cancelled then
  local ev
  seq, ev = xnext(KEYS[4], ARGV[8], seq + 1, 'started', function(s)
    return patch32(patch32(ARGV[5], tonumber(ARGV[6]), s), tonumber(ARGV[7]), att)
  end)
  redis.call('PUBLISH', KEYS[5], ev)
  redis.call('PUBLISH', KEYS[6], ev)
end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started_at', ARGV[3],
  'digest', digest, 'attempt', att, 'seq', seq)
return {cancelled and 'cancelled' or 'ok', att, seq}
