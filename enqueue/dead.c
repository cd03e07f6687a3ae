/*
 * dead.c: `enqueue dead`: list the dead letters in {ns}:dead, and the
 * decoding of an entry that retry_dead.c uses too.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "enqueue.h"

enum { O_LIMIT = 1 };

/* Decode entry bytes (u holds what the fields point into). */
void
dead_decode(const redisReply *e, msgpack_unpacked *u, struct dead_entry *d)
{
	const msgpack_object *p;

	memset(d, 0, sizeof *d);
	if (e->type != REDIS_REPLY_STRING || !print_unpack(e->str, e->len, u) ||
	    u->data.type != MSGPACK_OBJECT_MAP)
		return;
	d->ok = true;
	mp_get_str(&u->data, "id", d->id, sizeof d->id);
	mp_get_str(&u->data, "reason", d->reason, sizeof d->reason);
	mp_get_str(&u->data, "worker", d->worker, sizeof d->worker);
	mp_get_str(&u->data, "error", d->error, sizeof d->error);
	mp_get_num(&u->data, "ts", &d->ts);
	if ((p = mp_get(&u->data, "payload_len")) != NULL && p->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		d->payload_len = (size_t)p->via.u64;	/* over max_payload: only its hashes were kept */
	if ((p = mp_get(&u->data, "payload")) != NULL) {
		if (p->type == MSGPACK_OBJECT_BIN) {
			d->payload = p->via.bin.ptr;
			d->payload_len = p->via.bin.size;
		} else if (p->type == MSGPACK_OBJECT_STR) {
			d->payload = p->via.str.ptr;
			d->payload_len = p->via.str.size;
		}
	}
}

/* The id inside a payload, when the entry did not name one. */
void
dead_payload_id(struct dead_entry *d)
{
	msgpack_unpacked u;
	char id[ID_MAX + 1];

	if (d->id[0] != '\0' || d->payload == NULL)
		return;
	msgpack_unpacked_init(&u);
	if (print_unpack(d->payload, d->payload_len, &u) && mp_get_str(&u.data, "id", id, sizeof id) &&
	    id_valid(id, strlen(id)))
		snprintf(d->id, sizeof d->id, "%s", id);
	msgpack_unpacked_destroy(&u);
}

/* enqueue dead [--limit N] */
int
dead_main(int argc, char **argv)
{
	static const struct opt opts[] = { { "limit", 0, true, O_LIMIT }, { NULL, 0, false, 0 } };
	struct opt_state st;
	const char *arg;
	char err[ERR_MAX], stop[24];
	long long limit = 50, total;
	msgpack_unpacked u;
	redisReply *r, *n;
	struct jbuf jb;
	int o;

	opt_init(&st, argc, argv, "dead");
	while ((o = opt_next(&st, opts, &arg)) != OPT_END) {
		if (o == OPT_ARG)
			enq_usage("dead", "unexpected argument \"%s\"", arg);
		if (parse_int(arg, 0, 100000000, &limit, err, sizeof err) != 0)
			enq_die(EXIT_USAGE, "--limit: %s", err);
	}
	enq_setup(true);
	snprintf(stop, sizeof stop, "%lld", limit - 1);
	r = redis_commandv(en->rc, "LRANGE", en->keys.dead, "0", stop);
	n = redis_commandv(en->rc, "LLEN", en->keys.dead);
	total = n->integer;
	freeReplyObject(n);
	msgpack_unpacked_init(&u);
	if (en->json) {
		print_json_begin(&jb);
		msgpack_pack_map(&jb.pk, 2);
		mp_kv_int(&jb.pk, "total", total);
		mp_str(&jb.pk, "entries");
		msgpack_pack_array(&jb.pk, r->elements);
	} else if (r->elements > 0)
		printf("%-5s %-19s %-24s %-18s %8s  %s\n", "INDEX", "TIME", "ID", "REASON", "BYTES", "ERROR");
	for (size_t i = 0; i < r->elements; i++) {
		struct dead_entry d;
		dead_decode(r->element[i], &u, &d);
		if (en->json) {
			msgpack_pack_map(&jb.pk, 7);
			mp_kv_int(&jb.pk, "index", (int64_t)i);
			mp_kv_double(&jb.pk, "ts", d.ts);
			print_json_kv_str(&jb, "id", d.id[0] ? d.id : NULL);
			print_json_kv_str(&jb, "reason", d.ok ? d.reason : "unreadable");
			print_json_kv_str(&jb, "error", d.error);
			print_json_kv_str(&jb, "worker", d.worker[0] ? d.worker : NULL);
			mp_kv_uint(&jb.pk, "payload_size", d.payload_len);
		} else {
			char date[32] = "-";
			time_t t = (time_t)d.ts;
			struct tm tm;
			if (d.ts > 0) {
				localtime_r(&t, &tm);
				strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
			}
			printf("%-5zu %-19s %-24s %-18s %8zu  %s\n", i, date, d.id[0] ? print_safe(d.id) : "-",
			    d.ok ? print_safe(d.reason) : "(unreadable)", d.payload_len, print_safe(d.error));
		}
	}
	if (en->json)
		print_json_end(&jb);
	else if (total == 0)
		printf("no dead letters\n");
	else if ((long long)r->elements < total)
		printf("(%lld more; --limit 0 shows all)\n", total - (long long)r->elements);
	msgpack_unpacked_destroy(&u);
	freeReplyObject(r);
	print_flush();
	return EXIT_OK;
}
