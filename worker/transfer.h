/*
 * transfer.h: what upload.c asks of transfer.c (libcurl, loaded at the
 * first upload, and its multi handle driven by the loop), and nothing
 * else includes.  The interface of both is upload_* in worker.h.
 */
#ifndef TRANSFER_H
#define TRANSFER_H

#include <curl/curl.h>

#include "worker.h"

/*
 * libcurl brings a TLS stack, GSSAPI, LDAP, nghttp2 and more with it: an
 * idle worker is 2.6 MB resident without it and 8.4 MB with it (measured,
 * Debian 12).  It is loaded with dlopen() at the first upload, so a worker
 * that never uploads does not carry it.
 */
struct transfer_curl {
	__typeof__(&curl_easy_cleanup) easy_cleanup;
	__typeof__(&curl_easy_getinfo) easy_getinfo;
	__typeof__(&curl_easy_init) easy_init;
	__typeof__(&curl_easy_reset) easy_reset;
	__typeof__(&curl_easy_setopt) easy_setopt;
	__typeof__(&curl_easy_strerror) easy_strerror;
	__typeof__(&curl_global_cleanup) global_cleanup;
	__typeof__(&curl_global_init) global_init;
	__typeof__(&curl_multi_add_handle) multi_add_handle;
	__typeof__(&curl_multi_assign) multi_assign;
	__typeof__(&curl_multi_cleanup) multi_cleanup;
	__typeof__(&curl_multi_info_read) multi_info_read;
	__typeof__(&curl_multi_init) multi_init;
	__typeof__(&curl_multi_remove_handle) multi_remove_handle;
	__typeof__(&curl_multi_setopt) multi_setopt;
	__typeof__(&curl_multi_socket_action) multi_socket_action;
	__typeof__(&curl_slist_append) slist_append;
	__typeof__(&curl_slist_free_all) slist_free_all;
};
/* The functions, once transfer_load() returned 0. */
extern struct transfer_curl transfer_cu;

/*
 * Load libcurl and set up the multi handle, once; -1 with err when it
 * cannot be.  ended(priv, code, http) for each transfer that is over
 * (priv: its CURLOPT_PRIVATE), after it left the multi handle.
 */
int transfer_load(void (*ended)(void *priv, CURLcode code, long http), char *err, size_t errlen);
/* Start easy's transfer in the multi handle. */
void transfer_add(CURL *easy);
/* Take easy's transfer out of the multi handle, over or not. */
void transfer_remove(CURL *easy);
/* At exit: the multi handle and libcurl's globals. */
void transfer_shutdown(void);

#endif
