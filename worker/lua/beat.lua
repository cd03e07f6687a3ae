-- beat.lua: the heartbeat; the lock holder also promotes due retries and
-- reaps workers whose heartbeat lapsed.
--
-- KEYS[1] {ns}:worker:<worker>
-- KEYS[2] {ns}:workers
-- KEYS[3] {ns}:reaper
-- KEYS[4] {ns}:delayed
-- KEYS[5] {ns}:queue
-- KEYS[6] {ns}:dead
-- KEYS[7] {ns}:orphans:<host>
-- ARGV[1] worker id
-- ARGV[2] now
-- ARGV[3] heartbeat ttl, ms
-- ARGV[4] reaper_interval, ms
-- ARGV[5] key prefix "{ns}:"
-- ARGV[6] max_attempts
-- ARGV[7] host
-- ARGV[8] pid
-- ARGV[9] version
-- ARGV[10] started_at
-- ARGV[11] concurrency
-- ARGV[12] jobs running
-- ARGV[13] their ids, comma-separated
-- ARGV[14] log_maxlen
-- ARGV[15] heartbeat ttl, s
-- ARGV[16] dead_maxlen ('0': untrimmed)
-- ARGV[17] mode: absent or 'full' (every step below, as an older
--          worker sends it), or the letters of the steps to take:
--          s  the static fields (id host pid version started_at
--             concurrency) and {ns}:hosts, written once at start and
--             again when the worker finds itself missing from {ns}:workers
--          d  beat, running, jobs: when the jobs changed
--          e  the hash's expiry (ARGV[3])
--          o  this host's orphans (also taken after reaping) and the queue length
--          l  try the reaper lock and, when taken, reap
--          r  reap: the caller holds the lock (it took it with SET NX)
--          The score in {ns}:workers is written in every mode but 'r'.
-- ARGV[18] free bytes in builds_root
-- ARGV[19] '1' when below min_free (the worker takes no job), else '0';
--          both written with the s, d and e steps
--
-- Returns {reaped workers and how many payloads each held (flat), dead
-- workers whose containers this host should remove, queue length (-1
-- when not read), 1 when the worker was not in {ns}:workers or its hash
-- was gone (0 else): it then writes its whole record again}.
-- Sends `requeued` (reason worker_lost) or `dead` for each reaped job.
--
-- The worker beats with this script only when it has something to write
-- (start, a change of its jobs, every 12th beat for the expiry and the
-- orphans); its other beats are a plain ZADD {ns}:workers, with SET
-- {ns}:reaper NX PX when it may reap, and mode 'r' when the SET took the
-- lock: two commands per idle beat.  In the letter modes the score alone
-- says who is dead (a worker's hash outlives its beats, and the reaper
-- deletes it), and the outage rule is the caller's: it reaps only after
-- a heartbeat_ttl of its own beats answered without a gap longer than
-- the ttl (a worker cut off from Redis, or one just started, waits a ttl).
-- The reaper's cost grows with the dead: both ZRANGEBYSCOREs read only
-- what is due, LIMITed.
--
-- A reaped payload that does not own its job's record (a duplicate id
-- BLMOVEd but not claimed yet) only goes back to the queue, where the
-- next claim dead-letters it; the record, its `lost` count and its
-- stream belong to the real job.  Ids are read by the prelude's msgpack
-- scanner, so payloads with bin, ext or timestamps count too.
--
-- In mode 'full', {ns}:clock keeps the last beat of any worker and when beats came back
-- after a gap longer than the ttl (Redis, or every worker, was away): no
-- one is reaped until the fleet has had a ttl to beat again, so an outage
-- does not make live workers look dead.
local P = ARGV[5]
local now = tonumber(ARGV[2])
local mode = ARGV[17] or 'full'
local full = mode == 'full'
local function has(c) return full or string.find(mode, c, 1, true) ~= nil end
local isnew = 0
if full then
  local last = tonumber(redis.call('HGET', P .. 'clock', 'beat') or '0')
  if now - last > tonumber(ARGV[15]) then redis.call('HSET', P .. 'clock', 'back', ARGV[2]) end
  if now > last then redis.call('HSET', P .. 'clock', 'beat', ARGV[2]) end
end
if full then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'host', ARGV[7], 'pid', ARGV[8], 'version', ARGV[9],
    'started_at', ARGV[10], 'beat', ARGV[2], 'concurrency', ARGV[11], 'running', ARGV[12],
    'jobs', ARGV[13])
elseif has('s') then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'host', ARGV[7], 'pid', ARGV[8], 'version', ARGV[9],
    'started_at', ARGV[10], 'concurrency', ARGV[11], 'beat', ARGV[2], 'running', ARGV[12],
    'jobs', ARGV[13])
elseif has('d') then
  -- three new fields: the hash was gone (expired, deleted): the worker writes it all again
  if redis.call('HSET', KEYS[1], 'beat', ARGV[2], 'running', ARGV[12], 'jobs', ARGV[13]) == 3 then
    isnew = 1
  end
end
if has('e') and redis.call('PEXPIRE', KEYS[1], ARGV[3]) == 0 then isnew = 1 end
if full or mode ~= 'r' then
  if redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) == 1 then isnew = 1 end
end
if has('s') then redis.call('HSET', P .. 'hosts', ARGV[1], ARGV[7]) end
if ARGV[18] and (has('s') or has('d') or has('e')) then
  redis.call('HSET', KEYS[1], 'disk_free', ARGV[18], 'disk_low', ARGV[19])
end
local reaped = {}
local reap = (not full and has('r')) or (has('l') and redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[4]))
if reap then
  for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)) do
    redis.call('ZREM', KEYS[4], p)
    redis.call('RPUSH', KEYS[5], p)
  end
  local cutoff = now - tonumber(ARGV[15])
  local dead
  if full then
    if tonumber(redis.call('HGET', P .. 'clock', 'back') or '0') > cutoff then cutoff = 0 end
    dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
  else
    dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, 100)
  end
  for _, w in ipairs(dead) do
    if w ~= ARGV[1] and (not full or redis.call('EXISTS', P .. 'worker:' .. w) == 0) then
      local ak = P .. 'active:' .. w
      local n = 0
      while true do
        local p = redis.call('RPOP', ak)
        if not p then break end
        n = n + 1
        local id = payload_id(p)
        if id and owns(P, id, p, w) then
          local jk = P .. 'job:' .. id
          local lost = redis.call('HINCRBY', jk, 'lost', 1)
          local h = redis.call('HMGET', jk, 'attempt', 'seq')
          local att = tonumber(h[1] or '0')
          if lost >= tonumber(ARGV[6]) then
            local msg = 'lost with its worker ' .. lost .. ' times (last: ' .. w .. ')'
            deadpush(KEYS[6], deadentry('worker_lost', msg, p, id, ARGV[1], now), ARGV[16])
            redis.call('HSET', jk, 'state', 'dead', 'error', msg, 'finished_at', ARGV[2])
            event(P, id, 'dead', {reason = 'worker_lost', error = msg}, ARGV[14], now, att, h[2])
          else
            redis.call('RPUSH', KEYS[5], p)
            redis.call('HSET', jk, 'state', 'queued')
            event(P, id, 'requeued', {reason = 'worker_lost', worker = w}, ARGV[14], now, att, h[2])
          end
        else
          redis.call('RPUSH', KEYS[5], p)
        end
      end
      redis.call('ZREM', KEYS[2], w)
      local host = redis.call('HGET', P .. 'hosts', w)
      redis.call('HDEL', P .. 'hosts', w)
      if not full then redis.call('DEL', P .. 'worker:' .. w) end
      if host then redis.call('SADD', P .. 'orphans:' .. host, w) end
      table.insert(reaped, w)
      table.insert(reaped, tostring(n))
    end
  end
end
local orphans, qlen = {}, -1
if has('o') or #reaped > 0 then
  -- A reaper on the dead worker's host removes its containers at once;
  -- elsewhere, a worker of that host at its next 'o' beat.
  orphans = redis.call('SPOP', KEYS[7], 100)
end
if has('o') then qlen = redis.call('LLEN', KEYS[5]) end
return {reaped, orphans, qlen, isnew}
