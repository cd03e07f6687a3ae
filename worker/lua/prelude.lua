-- prelude.lua: helpers every worker script starts with.
--
-- The build prepends this file to each script of worker/lua/ (Makefile,
-- scripts/lua2c.awk), so a script is prelude.lua followed by its own
-- file, byte for byte.  Nothing here touches a key by itself.

-- The seq of the last event in the stream logkey, or 0.
local function lastseq(logkey)
  local last = redis.call('XREVRANGE', logkey, '+', '-', 'COUNT', 1)
  if last[1] then
    local f = last[1][2]
    for i = 1, #f, 2 do if f[i] == 'seq' then return tonumber(f[i+1]) end end
  end
  return 0
end

-- Append one event to the stream, trimmed to maxlen ('0': untrimmed).
local function xadd(logkey, maxlen, seq, typ, ev)
  if maxlen == '0' then
    redis.call('XADD', logkey, '*', 'seq', seq, 'type', typ, 'event', ev)
  else
    redis.call('XADD', logkey, 'MAXLEN', '~', maxlen, '*', 'seq', seq, 'type', typ, 'event', ev)
  end
end

-- The id of a payload, or nil when it has no valid one.
local function payload_id(p)
  local ok, j = pcall(cmsgpack.unpack, p)
  if not ok or type(j) ~= 'table' then return nil end
  local id = j['id']
  if type(id) ~= 'string' or #id > 64 or not string.match(id, '^[%w][%w_%.%-]*$') then return nil end
  return id
end

-- Send an event the script makes itself: both channels and the stream.
local function event(prefix, id, typ, fields, maxlen, now, attempt)
  local lk = prefix .. 'log:' .. id
  local seq = lastseq(lk) + 1
  fields.id = id; fields.seq = seq; fields.ts = now; fields.type = typ
  fields.attempt = attempt
  local ev = cmsgpack.pack(fields)
  redis.call('PUBLISH', prefix .. 'progress:' .. id, ev)
  redis.call('PUBLISH', prefix .. 'events', ev)
  xadd(lk, maxlen, seq, typ, ev)
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

-- A dead letter (PROTOCOL.md "Dead letters"), the payload as bin.
local function deadentry(reason, err, p, id, worker, now)
  local n = id and 6 or 5
  local s = string.char(0x80 + n) .. cmsgpack.pack('reason') .. cmsgpack.pack(reason)
    .. cmsgpack.pack('error') .. cmsgpack.pack(err)
    .. cmsgpack.pack('payload') .. string.char(0xc6) .. be32(#p) .. p
    .. cmsgpack.pack('worker') .. cmsgpack.pack(worker)
    .. cmsgpack.pack('ts') .. cmsgpack.pack(now)
  if id then s = s .. cmsgpack.pack('id') .. cmsgpack.pack(id) end
  return s
end
