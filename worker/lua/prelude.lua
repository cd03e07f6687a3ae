-- prelude.lua: helpers every worker script starts with.
--
-- The build prepends this file to each script of worker/lua/ (Makefile,
-- scripts/lua2c.awk), so a script is prelude.lua followed by its own
-- file, byte for byte.  Nothing here touches a key by itself.

-- The seq of the last event in the stream logkey (0 when it is empty),
-- and whether its entry's id is '0-<seq>' (this version's ids) rather
-- than one of Redis's clock (a stream an older worker wrote).
local function lastseq(logkey)
  local last = redis.call('XREVRANGE', logkey, '+', '-', 'COUNT', 1)
  if last[1] then
    local f = last[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'seq' then return tonumber(f[i+1]), string.sub(last[1][1], 1, 2) == '0-' end
    end
  end
  return 0, true
end

-- XADD of one event as entry id, trimmed to maxlen ('0': untrimmed); the
-- error reply (a table with err) when Redis refuses it.
local function xadd_id(logkey, maxlen, id, seq, typ, ev)
  if maxlen == '0' then
    return redis.pcall('XADD', logkey, id, 'seq', seq, 'type', typ, 'event', ev)
  end
  return redis.pcall('XADD', logkey, 'MAXLEN', '~', maxlen, id, 'seq', seq, 'type', typ, 'event', ev)
end

-- Append an event to the stream as entry '0-<seq>', unless the stream has
-- it already; returns whether it was added.  One command: Redis itself
-- refuses an id that is not above the stream's last ("equal or smaller
-- than the target stream top item"), which is what a replay after a lost
-- reply, or an event overtaken by a later one, sends.  Only then is the
-- last entry read: a stream an older worker wrote (ids of Redis's clock,
-- always above '0-<seq>') is compared by its `seq` field and appended to
-- with an id of Redis's choosing, as before.
local function xadd(logkey, maxlen, seq, typ, ev)
  local r = xadd_id(logkey, maxlen, '0-' .. seq, seq, typ, ev)
  if type(r) ~= 'table' or not r.err then return true end
  if not string.find(r.err, 'equal or smaller', 1, true) then error(r) end
  local top, ours = lastseq(logkey)
  if ours or top >= tonumber(seq) then return false end
  r = xadd_id(logkey, maxlen, '*', seq, typ, ev)
  if type(r) == 'table' and r.err then error(r) end
  return true
end

-- Append the next event of a job: guess is its seq as the job hash knows
-- it (the hash's `seq` + 1, written by every script that sends an event;
-- the emit script's events, sent while the job runs, do not write it, so
-- the stream may be ahead).  mk(seq) makes the event.  When the stream
-- has guess already, the seq after its last entry is taken instead.
-- Returns the seq and the event.
local function xnext(logkey, maxlen, guess, typ, mk)
  local ev = mk(guess)
  if xadd(logkey, maxlen, guess, typ, ev) then return guess, ev end
  local seq = lastseq(logkey) + 1
  ev = mk(seq)
  if not xadd(logkey, maxlen, seq, typ, ev) then
    -- entries past the last one were deleted (XDEL): Redis's own id, as an older worker's
    local r = xadd_id(logkey, maxlen, '*', seq, typ, ev)
    if type(r) == 'table' and r.err then error(r) end
  end
  return seq, ev
end

-- msgpack, for the scanner below: bytes after the type byte of the
-- fixed-size types 0xca..0xd8 (floats, ints, fixext), one byte each of a
-- constant string (no table is built on every call of every script).
local MP_FIXED = '\4\8\1\2\4\8\1\2\4\8\2\3\5\9\17'

-- The big-endian unsigned integer of w bytes at pos in s, or nil past its end.
local function mp_uint(s, pos, w)
  if pos + w - 1 > #s then return nil end
  local v = 0
  for i = pos, pos + w - 1 do v = v * 256 + string.byte(s, i) end
  return v
end

-- The head of the msgpack object at pos in s: its kind and two numbers.
-- 'atom' (nil, bool, int, float, fixext: the position after it);
-- 'str' and 'blob' (bin, ext: where the data starts, its length);
-- 'array' and 'map' (the position after the head, the count of elements
-- or pairs).  nil for a byte that starts no object, or a cut-off head.
local function mp_head(s, pos)
  local b = string.byte(s, pos)
  if not b then return nil end
  if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3 then return 'atom', pos + 1 end
  if b <= 0x8f then return 'map', pos + 1, b - 0x80 end
  if b <= 0x9f then return 'array', pos + 1, b - 0x90 end
  if b <= 0xbf then return 'str', pos + 1, b - 0xa0 end
  if b >= 0xca and b <= 0xd8 then return 'atom', pos + 1 + string.byte(MP_FIXED, b - 0xc9) end
  if b == 0xc1 then return nil end
  -- bin 0xc4..c6, ext 0xc7..c9, str 0xd9..db: a length of 1, 2 or 4 bytes;
  -- array 0xdc..dd, map 0xde..df: a count of 2 or 4 bytes.
  local kind, w, skip = 'blob', 2 ^ (b - 0xc4), 0
  if b >= 0xde then kind, w = 'map', 2 ^ (b - 0xdd)
  elseif b >= 0xdc then kind, w = 'array', 2 ^ (b - 0xdb)
  elseif b >= 0xd9 then kind, w = 'str', 2 ^ (b - 0xd9)
  elseif b >= 0xc7 then w, skip = 2 ^ (b - 0xc7), 1 end  -- the ext's type byte first
  local n = mp_uint(s, pos + 1, w)
  if not n then return nil end
  return kind, pos + 1 + w + skip, n
end

-- The position after the msgpack object at pos in s, or nil when it is
-- cut off, invalid, or has containers nested more than depth deep.  A
-- container announcing more elements than bytes remain is refused before
-- its elements are walked, so the work is bounded by #s.
local function mp_skip(s, pos, depth)
  local kind, at, n = mp_head(s, pos)
  if kind == 'atom' then return at <= #s + 1 and at or nil end
  if kind == 'str' or kind == 'blob' then return at + n <= #s + 1 and at + n or nil end
  if not kind then return nil end
  if kind == 'map' then n = n * 2 end
  -- An empty container adds no depth, as in mp_precheck(): it is read at any depth.
  if n == 0 then return at end
  if depth < 1 or n > #s + 1 - at then return nil end
  for _ = 1, n do
    at = mp_skip(s, at, depth - 1)
    if not at then return nil end
  end
  return at
end

-- The id of a payload, or nil when it has no valid one.  A scanner, not
-- cmsgpack (which refuses bin, ext and timestamps): it walks the
-- top-level map only, skipping every value, so it reads whatever the
-- worker's payload_decode() accepts (containers up to 15 deep in all, no
-- trailing bytes, `id` once, a str matching the id pattern).
local function payload_id(p)
  local kind, at, n = mp_head(p, 1)
  if kind ~= 'map' or n * 2 > #p then return nil end
  local id
  for _ = 1, n do
    local kk, kat, kn = mp_head(p, at)
    local isid = kk == 'str' and kn == 2 and string.sub(p, kat, kat + 1) == 'id'
    at = mp_skip(p, at, 14)
    if not at then return nil end
    if isid then
      local vk, vat, vn = mp_head(p, at)
      if id or vk ~= 'str' or vat + vn > #p + 1 then return nil end
      id = string.sub(p, vat, vat + vn - 1)
    end
    at = mp_skip(p, at, 14)
    if not at then return nil end
  end
  if at ~= #p + 1 or not id then return nil end
  if #id > 64 or not string.match(id, '^[%w][%w_%.%-]*$') then return nil end
  return id
end

-- Whether payload p owns the record of job id (PROTOCOL.md "Duplicate
-- ids"): there is no record (no job hash, no result), or the record is
-- queued, or running under worker w (when w is given), with p's digest.
-- A record without digest (a producer that sets none, before a claim
-- bound one) is owned by no refusal (w nil): a hostile payload refused
-- first must not mark the real job dead; the reaper and the release may
-- move it back.  A payload that does not own the record must not touch it.
local function owns(P, id, p, w)
  local h = redis.call('HMGET', P .. 'job:' .. id, 'state', 'digest', 'worker')
  if not h[1] and not h[2] then return redis.call('EXISTS', P .. 'result:' .. id) == 0 end
  if not h[2] and w == nil then return false end
  if h[2] and h[2] ~= redis.sha1hex(p) then return false end
  return h[1] == 'queued' or (w ~= nil and h[1] == 'running' and h[3] == w)
end

-- Send an event the script makes itself: the stream, then both channels;
-- the job hash's `seq` follows.  seq0 is the hash's `seq` (or nil).
local function event(prefix, id, typ, fields, maxlen, now, attempt, seq0)
  local lk = prefix .. 'log:' .. id
  fields.id = id; fields.ts = now; fields.type = typ
  fields.attempt = attempt
  local seq, ev = xnext(lk, maxlen, (tonumber(seq0) or 0) + 1, typ, function(s)
    fields.seq = s
    return cmsgpack.pack(fields)
  end)
  redis.call('PUBLISH', prefix .. 'progress:' .. id, ev)
  redis.call('PUBLISH', prefix .. 'events', ev)
  redis.call('HSET', prefix .. 'job:' .. id, 'seq', seq)
end

-- n as 4 big-endian bytes.
local function be32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

-- s with the 4 bytes after offset off (0-based, past a 1-byte tag) set to v.
local function patch32(s, off, v)
  return string.sub(s, 1, off + 1) .. be32(v) .. string.sub(s, off + 6)
end

-- s as a msgpack bin.
local function mp_bin(s)
  local n = #s
  if n < 256 then return string.char(0xc4, n) .. s end
  if n < 65536 then return string.char(0xc5, math.floor(n / 256), n % 256) .. s end
  return string.char(0xc6) .. be32(n) .. s
end

-- A dead letter (PROTOCOL.md "Dead letters"): the payload as bin, or, when
-- sha256 is given (a payload over max_payload), only payload_len,
-- payload_sha256 and payload_prefix (its first 256 bytes, bin).
local function deadentry(reason, err, p, id, worker, now, sha256)
  local n = (id and 6 or 5) + (sha256 and 2 or 0)
  local s = string.char(0x80 + n) .. cmsgpack.pack('reason') .. cmsgpack.pack(reason)
    .. cmsgpack.pack('error') .. cmsgpack.pack(err)
  if sha256 then
    s = s .. cmsgpack.pack('payload_len') .. cmsgpack.pack(#p)
      .. cmsgpack.pack('payload_sha256') .. cmsgpack.pack(sha256)
      .. cmsgpack.pack('payload_prefix') .. mp_bin(string.sub(p, 1, 256))
  else
    s = s .. cmsgpack.pack('payload') .. mp_bin(p)
  end
  s = s .. cmsgpack.pack('worker') .. cmsgpack.pack(worker) .. cmsgpack.pack('ts') .. cmsgpack.pack(now)
  if id then s = s .. cmsgpack.pack('id') .. cmsgpack.pack(id) end
  return s
end

-- Push a dead letter, keeping at most maxlen ('0': all).
local function deadpush(deadkey, entry, maxlen)
  redis.call('LPUSH', deadkey, entry)
  if maxlen ~= '0' then redis.call('LTRIM', deadkey, 0, tonumber(maxlen) - 1) end
end
