/*
 * scripts.c: the Lua scripts that change a job's state.
 *
 * Each state change that must be atomic is one script, so that a lease
 * check and the write it guards cannot be separated by another client:
 * claim (take the lease), emit (send an event while holding it), finish
 * (record the one result), refuse (dead-letter a payload), beat
 * (heartbeat, reaper, delayed retries, orphans) and release (put held
 * payloads back on the queue).  Their text lives in worker/lua/ (each
 * file's header lists its KEYS and ARGV); the build turns prelude.lua +
 * each file into a C string in $(B)/gen/worker_lua.h.  PROTOCOL.md
 * describes them in words.
 *
 * Keys a script derives from the "{ns}:" prefix share the hash tag of the
 * keys it is given, so a Redis Cluster serves them from the same slot.
 */
#include <sha1.h>
#include <string.h>

#include "worker.h"
#include "worker_lua.h"

static const char *script_bodies[SCRIPT_COUNT] = {
	[SCRIPT_CLAIM] = lua_claim, [SCRIPT_EMIT] = lua_emit,
	[SCRIPT_FINISH] = lua_finish, [SCRIPT_REFUSE] = lua_refuse,
	[SCRIPT_BEAT] = lua_beat, [SCRIPT_RELEASE] = lua_release,
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
