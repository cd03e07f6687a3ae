/*
 * scripts.c: the Lua scripts that change a job's state.
 *
 * Each state change that must be atomic is one script, so that a lease
 * check and the write it guards cannot be separated by another client:
 * claim (take the lease), emit (send an event while holding it), finish
 * (record the one result), refuse (dead-letter a payload), beat
 * (heartbeat, reaper, delayed retries, orphans) and release (put held
 * payloads back on the queue).  PROTOCOL.md describes them in words.
 *
 * Keys a script derives from the "{ns}:" prefix share the hash tag of the
 * keys it is given, so a Redis Cluster serves them from the same slot.
 */
#include <sha1.h>
#include <string.h>

#include "worker.h"

/* Helpers every script starts with. */
#define LUA_PRELUDE                                                                          \
	"local function lastseq(logkey)\n"                                                   \
	"  local last = redis.call('XREVRANGE', logkey, '+', '-', 'COUNT', 1)\n"             \
	"  if last[1] then\n"                                                                \
	"    local f = last[1][2]\n"                                                         \
	"    for i = 1, #f, 2 do if f[i] == 'seq' then return tonumber(f[i+1]) end end\n"    \
	"  end\n"                                                                            \
	"  return 0\n"                                                                       \
	"end\n"                                                                              \
	"local function xadd(logkey, maxlen, seq, typ, ev)\n"                                \
	"  if maxlen == '0' then\n"                                                          \
	"    redis.call('XADD', logkey, '*', 'seq', seq, 'type', typ, 'event', ev)\n"        \
	"  else\n"                                                                           \
	"    redis.call('XADD', logkey, 'MAXLEN', '~', maxlen, '*', 'seq', seq, 'type', typ, 'event', ev)\n" \
	"  end\n"                                                                            \
	"end\n"                                                                              \
	"-- Redis 7.0's cmsgpack cannot read bin (a profile_archive): for such a payload\n"  \
	"-- the id is found by walking the msgpack bytes (the last \"id\" key, as cmsgpack does).\n" \
	"local function mp_len(p, i, n)\n"                                                   \
	"  local v = 0\n"                                                                    \
	"  for k = 0, n - 1 do v = v * 256 + (string.byte(p, i + k) or error('short')) end\n" \
	"  return v\n"                                                                       \
	"end\n"                                                                              \
	"local function mp_skip(p, i)\n"                                                     \
	"  local b = string.byte(p, i) or error('short')\n"                                  \
	"  local n, c\n"                                                                     \
	"  if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3 then return i + 1 end\n" \
	"  if b >= 0xa0 and b <= 0xbf then return i + 1 + b - 0xa0 end\n"                    \
	"  if b >= 0x80 and b <= 0x8f then n, c, i = b - 0x80, 2, i + 1\n"                   \
	"  elseif b >= 0x90 and b <= 0x9f then n, c, i = b - 0x90, 1, i + 1\n"               \
	"  elseif b == 0xdc or b == 0xde then n, c, i = mp_len(p, i + 1, 2), (b == 0xde and 2 or 1), i + 3\n" \
	"  elseif b == 0xdd or b == 0xdf then n, c, i = mp_len(p, i + 1, 4), (b == 0xdf and 2 or 1), i + 5\n" \
	"  elseif b == 0xc4 or b == 0xd9 then return i + 2 + mp_len(p, i + 1, 1)\n"          \
	"  elseif b == 0xc5 or b == 0xda then return i + 3 + mp_len(p, i + 1, 2)\n"          \
	"  elseif b == 0xc6 or b == 0xdb then return i + 5 + mp_len(p, i + 1, 4)\n"          \
	"  elseif b == 0xc7 then return i + 3 + mp_len(p, i + 1, 1)\n"                       \
	"  elseif b == 0xc8 then return i + 4 + mp_len(p, i + 1, 2)\n"                       \
	"  elseif b == 0xc9 then return i + 6 + mp_len(p, i + 1, 4)\n"                       \
	"  elseif b == 0xcc or b == 0xd0 then return i + 2\n"                                \
	"  elseif b == 0xcd or b == 0xd1 then return i + 3\n"                                \
	"  elseif b == 0xce or b == 0xd2 or b == 0xca then return i + 5\n"                   \
	"  elseif b == 0xcf or b == 0xd3 or b == 0xcb then return i + 9\n"                   \
	"  elseif b >= 0xd4 and b <= 0xd8 then return i + 2 + ({1, 2, 4, 8, 16})[b - 0xd3]\n" \
	"  else error('bad byte') end\n"                                                     \
	"  for k = 1, n * c do i = mp_skip(p, i) end\n"                                      \
	"  return i\n"                                                                       \
	"end\n"                                                                              \
	"local function mp_id(p)\n"                                                          \
	"  local b = string.byte(p, 1) or error('empty')\n"                                  \
	"  local n, i, id\n"                                                                 \
	"  if b >= 0x80 and b <= 0x8f then n, i = b - 0x80, 2\n"                             \
	"  elseif b == 0xde then n, i = mp_len(p, 2, 2), 4\n"                                \
	"  elseif b == 0xdf then n, i = mp_len(p, 2, 4), 6\n"                                \
	"  else return nil end\n"                                                            \
	"  for k = 1, n do\n"                                                                \
	"    local j = mp_skip(p, i)\n"                                                      \
	"    local v = string.byte(p, j)\n"                                                  \
	"    if string.sub(p, i, j - 1) == '\\162id' and v and v >= 0xa0 and v <= 0xbf then\n" \
	"      id = string.sub(p, j + 1, j + v - 0xa0)\n"                                    \
	"    elseif string.sub(p, i, j - 1) == '\\162id' and v == 0xd9 then\n"               \
	"      id = string.sub(p, j + 2, j + 1 + mp_len(p, j + 1, 1))\n"                     \
	"    end\n"                                                                          \
	"    i = mp_skip(p, j)\n"                                                            \
	"  end\n"                                                                            \
	"  return id\n"                                                                      \
	"end\n"                                                                              \
	"local function payload_id(p)\n"                                                     \
	"  local ok, j = pcall(cmsgpack.unpack, p)\n"                                        \
	"  local id\n"                                                                       \
	"  if ok and type(j) == 'table' then id = j['id']\n"                                 \
	"  elseif ok then return nil\n"                                                      \
	"  else\n"                                                                           \
	"    ok, id = pcall(mp_id, p)\n"                                                     \
	"    if not ok then return nil end\n"                                                \
	"  end\n"                                                                            \
	"  if type(id) ~= 'string' or #id > 64 or not string.match(id, '^[%w][%w_%.%-]*$') then return nil end\n" \
	"  return id\n"                                                                      \
	"end\n"                                                                              \
	"local function event(prefix, id, typ, fields, maxlen, now, attempt)\n"              \
	"  local lk = prefix .. 'log:' .. id\n"                                              \
	"  local seq = lastseq(lk) + 1\n"                                                    \
	"  fields.id = id; fields.seq = seq; fields.ts = now; fields.type = typ\n"           \
	"  fields.attempt = attempt\n"                                                       \
	"  local ev = cmsgpack.pack(fields)\n"                                               \
	"  redis.call('PUBLISH', prefix .. 'progress:' .. id, ev)\n"                         \
	"  redis.call('PUBLISH', prefix .. 'events', ev)\n"                                  \
	"  xadd(lk, maxlen, seq, typ, ev)\n"                                                 \
	"end\n"                                                                              \
	"local function be32(n)\n"                                                           \
	"  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,\n" \
	"    math.floor(n / 256) % 256, n % 256)\n"                                          \
	"end\n"                                                                              \
	"local function patch32(s, off, v)\n"                                             \
	"  return string.sub(s, 1, off + 1) .. be32(v) .. string.sub(s, off + 6)\n"        \
	"end\n"                                                                              \
	"local function deadentry(reason, err, p, id, worker, now)\n"                        \
	"  local n = id and 6 or 5\n"                                                        \
	"  local s = string.char(0x80 + n) .. cmsgpack.pack('reason') .. cmsgpack.pack(reason)\n" \
	"    .. cmsgpack.pack('error') .. cmsgpack.pack(err)\n"                              \
	"    .. cmsgpack.pack('payload') .. string.char(0xc6) .. be32(#p) .. p\n"            \
	"    .. cmsgpack.pack('worker') .. cmsgpack.pack(worker)\n"                          \
	"    .. cmsgpack.pack('ts') .. cmsgpack.pack(now)\n"                                 \
	"  if id then s = s .. cmsgpack.pack('id') .. cmsgpack.pack(id) end\n"               \
	"  return s\n"                                                                       \
	"end\n"

/*
 * claim: KEYS job, active, cancel, log, progress, events; ARGV worker,
 * payload, now, id, started event, offsets of its seq and attempt
 * placeholders, maxlen.  Takes the lease (attempt + 1) if the payload is
 * still in our active list and, unless a cancel is asked, sends `started`
 * in the same step; returns {verdict, attempt, last seq}.  The same call
 * again (sent anew because Redis's answer was lost) finds the lease
 * already taken with its `now`, and answers as the first time did.
 */
static const char script_claim[] = LUA_PRELUDE
	"if not redis.call('LPOS', KEYS[2], ARGV[2]) then return {'gone', 0, 0} end\n"
	"local seq = lastseq(KEYS[4])\n"
	"local h = redis.call('HMGET', KEYS[1], 'state', 'worker', 'started_at', 'attempt')\n"
	"if h[1] == 'running' and h[2] == ARGV[1] and h[3] == ARGV[3] then\n"
	"  local c = redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1\n"
	"  return {c and 'cancelled' or 'ok', tonumber(h[4]), seq}\n"
	"end\n"
	"local att = redis.call('HINCRBY', KEYS[1], 'attempt', 1)\n"
	"redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started_at', ARGV[3])\n"
	"redis.call('HDEL', KEYS[1], 'finished_at', 'exit_code', 'error', 'phase')\n"
	"redis.call('PERSIST', KEYS[1])\n"
	"redis.call('PERSIST', KEYS[4])\n"
	"if redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then return {'cancelled', att, seq} end\n"
	"seq = seq + 1\n"
	"local ev = patch32(patch32(ARGV[5], tonumber(ARGV[6]), seq), tonumber(ARGV[7]), att)\n"
	"redis.call('PUBLISH', KEYS[5], ev)\n"
	"redis.call('PUBLISH', KEYS[6], ev)\n"
	"xadd(KEYS[4], ARGV[8], seq, 'started', ev)\n"
	"return {'ok', att, seq}\n";

/*
 * emit: KEYS job, progress, events, log, cancel; ARGV worker, attempt,
 * event, seq, type, maxlen, lifecycle, phase, id.  Sends only while we
 * hold the lease: 0 lease lost, 1 sent, 2 sent and a cancel is asked.
 * An event already in the stream (a replay after Redis went away before
 * answering) is not sent again.
 */
static const char script_emit[] = LUA_PRELUDE
	"local h = redis.call('HMGET', KEYS[1], 'worker', 'attempt', 'state')\n"
	"if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or h[3] ~= 'running' then return 0 end\n"
	"if lastseq(KEYS[4]) < tonumber(ARGV[4]) then\n"
	"  redis.call('PUBLISH', KEYS[2], ARGV[3])\n"
	"  if ARGV[7] == '1' then redis.call('PUBLISH', KEYS[3], ARGV[3]) end\n"
	"  xadd(KEYS[4], ARGV[6], ARGV[4], ARGV[5], ARGV[3])\n"
	"  if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'phase', ARGV[8]) end\n"
	"end\n"
	"if redis.call('HEXISTS', KEYS[5], ARGV[9]) == 1 then return 2 end\n"
	"return 1\n";

/*
 * finish: KEYS job, active, results, result, progress, events, log,
 * cancel, delayed; ARGV worker, attempt, payload, result, finished event,
 * seq, status, exit_code, finished_at, error, result_ttl, maxlen, id,
 * retry_due, requeued event.  Records the one result (or schedules the
 * retry) only while we hold the lease; replaying our own call is "dup".
 */
static const char script_finish[] = LUA_PRELUDE
	"local h = redis.call('HMGET', KEYS[1], 'worker', 'attempt', 'state')\n"
	"if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] then return 'stale' end\n"
	"local retry = ARGV[14] ~= '0'\n"
	"if h[3] ~= 'running' then\n"
	"  if (not retry and h[3] == ARGV[7]) or (retry and h[3] == 'queued' and\n"
	"      redis.call('ZSCORE', KEYS[9], ARGV[3])) then return 'dup' end\n"
	"  return 'stale'\n"
	"end\n"
	"if redis.call('LREM', KEYS[2], 1, ARGV[3]) == 0 then return 'stale' end\n"
	"if retry then\n"
	"  redis.call('ZADD', KEYS[9], ARGV[14], ARGV[3])\n"
	"  redis.call('HSET', KEYS[1], 'state', 'queued', 'last_error', ARGV[10])\n"
	"  redis.call('PUBLISH', KEYS[5], ARGV[15])\n"
	"  redis.call('PUBLISH', KEYS[6], ARGV[15])\n"
	"  xadd(KEYS[7], ARGV[12], ARGV[6], 'requeued', ARGV[15])\n"
	"  return 'retry'\n"
	"end\n"
	"redis.call('HSET', KEYS[1], 'state', ARGV[7], 'finished_at', ARGV[9], 'exit_code', ARGV[8],\n"
	"  'error', ARGV[10])\n"
	"redis.call('LPUSH', KEYS[3], ARGV[4])\n"
	"redis.call('LPUSH', KEYS[4], ARGV[4])\n"
	"redis.call('EXPIRE', KEYS[4], ARGV[11])\n"
	"redis.call('HDEL', KEYS[8], ARGV[13])\n"
	"redis.call('PUBLISH', KEYS[5], ARGV[5])\n"
	"redis.call('PUBLISH', KEYS[6], ARGV[5])\n"
	"xadd(KEYS[7], ARGV[12], ARGV[6], 'finished', ARGV[5])\n"
	"redis.call('EXPIRE', KEYS[7], ARGV[11])\n"
	"redis.call('EXPIRE', KEYS[1], ARGV[11])\n"
	"return 'ok'\n";

/*
 * refuse: KEYS dead, active; ARGV payload, dead entry, id or '', error,
 * prefix, now, maxlen, reason, worker, dead_maxlen.  A job hash that
 * another worker is running is left alone: a hostile duplicate id must
 * not kill a real build's record.
 */
static const char script_refuse[] = LUA_PRELUDE
	"redis.call('LREM', KEYS[2], 1, ARGV[1])\n"
	"redis.call('LPUSH', KEYS[1], ARGV[2])\n"
	"if ARGV[10] ~= '0' then redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[10]) - 1) end\n"
	"if ARGV[3] ~= '' then\n"
	"  local jk = ARGV[5] .. 'job:' .. ARGV[3]\n"
	"  if redis.call('HGET', jk, 'state') ~= 'running' then\n"
	"    redis.call('HSET', jk, 'state', 'dead', 'error', ARGV[4], 'finished_at', ARGV[6],\n"
	"      'worker', ARGV[9])\n"
	"    event(ARGV[5], ARGV[3], 'dead', {reason = ARGV[8], error = ARGV[4]}, ARGV[7],\n"
	"      tonumber(ARGV[6]), tonumber(redis.call('HGET', jk, 'attempt') or '0'))\n"
	"  end\n"
	"end\n"
	"return 1\n";

/*
 * beat: KEYS worker, workers, reaper lock, delayed, queue, dead, orphans
 * of this host; ARGV id, now, ttl ms, reaper ms, prefix, max_attempts,
 * host, pid, version, started_at, concurrency, running, jobs, maxlen, ttl,
 * disk_free, disk_low.
 * One command per beat; the lock holder also promotes due retries and
 * reaps workers whose heartbeat lapsed.  Returns {reaped ids and counts,
 * dead workers whose containers this host should remove, queue length}.
 * {ns}:clock keeps the last beat of any worker and when beats came back
 * after a gap longer than the ttl (Redis, or every worker, was away): no
 * one is reaped until the fleet has had a ttl to beat again, so an outage
 * does not make live workers look dead.
 */
static const char script_beat[] = LUA_PRELUDE
	"local P = ARGV[5]\n"
	"local now = tonumber(ARGV[2])\n"
	"local last = tonumber(redis.call('HGET', P .. 'clock', 'beat') or '0')\n"
	"if now - last > tonumber(ARGV[15]) then redis.call('HSET', P .. 'clock', 'back', ARGV[2]) end\n"
	"if now > last then redis.call('HSET', P .. 'clock', 'beat', ARGV[2]) end\n"
	"redis.call('HSET', KEYS[1], 'id', ARGV[1], 'host', ARGV[7], 'pid', ARGV[8], 'version', ARGV[9],\n"
	"  'started_at', ARGV[10], 'beat', ARGV[2], 'concurrency', ARGV[11], 'running', ARGV[12],\n"
	"  'jobs', ARGV[13], 'disk_free', ARGV[16], 'disk_low', ARGV[17])\n"
	"redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
	"redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])\n"
	"redis.call('HSET', P .. 'hosts', ARGV[1], ARGV[7])\n"
	"local reaped = {}\n"
	"if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[4]) then\n"
	"  for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)) do\n"
	"    redis.call('ZREM', KEYS[4], p)\n"
	"    redis.call('RPUSH', KEYS[5], p)\n"
	"  end\n"
	"  local cutoff = now - tonumber(ARGV[15])\n"
	"  if tonumber(redis.call('HGET', P .. 'clock', 'back') or '0') > cutoff then cutoff = 0 end\n"
	"  for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)) do\n"
	"    if w ~= ARGV[1] and redis.call('EXISTS', P .. 'worker:' .. w) == 0 then\n"
	"      local ak = P .. 'active:' .. w\n"
	"      local n = 0\n"
	"      while true do\n"
	"        local p = redis.call('RPOP', ak)\n"
	"        if not p then break end\n"
	"        n = n + 1\n"
	"        local id = payload_id(p)\n"
	"        if id then\n"
	"          local jk = P .. 'job:' .. id\n"
	"          local lost = redis.call('HINCRBY', jk, 'lost', 1)\n"
	"          local att = tonumber(redis.call('HGET', jk, 'attempt') or '0')\n"
	"          if lost >= tonumber(ARGV[6]) then\n"
	"            local msg = 'lost with its worker ' .. lost .. ' times (last: ' .. w .. ')'\n"
	"            redis.call('LPUSH', KEYS[6], deadentry('worker_lost', msg, p, id, ARGV[1], now))\n"
	"            redis.call('HSET', jk, 'state', 'dead', 'error', msg, 'finished_at', ARGV[2])\n"
	"            event(P, id, 'dead', {reason = 'worker_lost', error = msg}, ARGV[14], now, att)\n"
	"          else\n"
	"            redis.call('RPUSH', KEYS[5], p)\n"
	"            redis.call('HSET', jk, 'state', 'queued')\n"
	"            event(P, id, 'requeued', {reason = 'worker_lost', worker = w}, ARGV[14], now, att)\n"
	"          end\n"
	"        else\n"
	"          redis.call('RPUSH', KEYS[5], p)\n"
	"        end\n"
	"      end\n"
	"      redis.call('ZREM', KEYS[2], w)\n"
	"      local host = redis.call('HGET', P .. 'hosts', w)\n"
	"      redis.call('HDEL', P .. 'hosts', w)\n"
	"      if host then redis.call('SADD', P .. 'orphans:' .. host, w) end\n"
	"      table.insert(reaped, w)\n"
	"      table.insert(reaped, tostring(n))\n"
	"    end\n"
	"  end\n"
	"end\n"
	"local orphans = redis.call('SPOP', KEYS[7], 100)\n"
	"return {reaped, orphans, redis.call('LLEN', KEYS[5])}\n";

/*
 * release: KEYS active, queue, worker, workers; ARGV prefix, now, maxlen,
 * reason, forget, then the payloads we still hold.  Everything else in
 * our active list goes back to the queue's right end (taken next).
 */
static const char script_release[] = LUA_PRELUDE
	"local P = ARGV[1]\n"
	"local keep = {}\n"
	"for i = 6, #ARGV do keep[ARGV[i]] = (keep[ARGV[i]] or 0) + 1 end\n"
	"local items = redis.call('LRANGE', KEYS[1], 0, -1)\n"
	"local moved = 0\n"
	"for i = #items, 1, -1 do\n"
	"  local p = items[i]\n"
	"  if keep[p] and keep[p] > 0 then\n"
	"    keep[p] = keep[p] - 1\n"
	"  else\n"
	"    redis.call('LREM', KEYS[1], -1, p)\n"
	"    redis.call('RPUSH', KEYS[2], p)\n"
	"    local id = payload_id(p)\n"
	"    if id then\n"
	"      local jk = P .. 'job:' .. id\n"
	"      redis.call('HSET', jk, 'state', 'queued')\n"
	"      redis.call('HINCRBY', jk, 'requeues', 1)\n"
	"      event(P, id, 'requeued', {reason = ARGV[4]}, ARGV[3], tonumber(ARGV[2]),\n"
	"        tonumber(redis.call('HGET', jk, 'attempt') or '0'))\n"
	"    end\n"
	"    moved = moved + 1\n"
	"  end\n"
	"end\n"
	"if ARGV[5] == '1' then\n"
	"  redis.call('DEL', KEYS[3])\n"
	"  redis.call('ZREM', KEYS[4], string.sub(KEYS[3], #P + 8))\n"
	"  redis.call('HDEL', P .. 'hosts', string.sub(KEYS[3], #P + 8))\n"
	"end\n"
	"return moved\n";

static const char *script_bodies[SCRIPT_COUNT] = {
	[SCRIPT_CLAIM] = script_claim, [SCRIPT_EMIT] = script_emit,
	[SCRIPT_FINISH] = script_finish, [SCRIPT_REFUSE] = script_refuse,
	[SCRIPT_BEAT] = script_beat, [SCRIPT_RELEASE] = script_release,
};

static char script_shas[SCRIPT_COUNT][41];

/* A script's text. */
const char *
script_body(enum script_id id)
{
	return script_bodies[id];
}

/* A script's SHA1, as EVALSHA wants it (computed once). */
const char *
script_sha(enum script_id id)
{
	if (script_shas[id][0] == '\0')
		SHA1Data((const uint8_t *)script_bodies[id], strlen(script_bodies[id]), script_shas[id]);
	return script_shas[id];
}
