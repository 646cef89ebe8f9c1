/* A device's TLS client on GnuTLS, as a device maker writes it; same options
 * and stdin protocol as wolfssl_device.c. -s takes a GnuTLS priority string
 * (replacing "NORMAL"); -m asks for RFC 8449 record_size_limit, GnuTLS' way
 * of limiting records; -e sends the request as TLS 1.3 early data when the
 * saved session allows it. */
#include <gnutls/gnutls.h>

#include "device_common.h"

int main(int argc, char **argv)
{
    struct device_opts o;
    if (device_parse(argc, argv, &o) != 0)
        return 2;
    gnutls_certificate_credentials_t cred;
    gnutls_certificate_allocate_credentials(&cred);
    if (gnutls_certificate_set_x509_trust_file(cred, o.ca, GNUTLS_X509_FMT_PEM) <= 0)
        return device_die("cannot load the CA file");
    char prio[512];
    snprintf(prio, sizeof prio, "%s%s%s", o.suites ? o.suites : "NORMAL",
             !strcmp(o.version, "1.2") ? ":-VERS-ALL:+VERS-TLS1.2"
             : !strcmp(o.version, "1.3") ? ":-VERS-ALL:+VERS-TLS1.3" : "",
             o.p256_only ? ":-GROUP-ALL:+GROUP-SECP256R1" : "");

    gnutls_datum_t saved = {NULL, 0};
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "forget", 6)) {
            gnutls_free(saved.data);
            saved.data = NULL;
            saved.size = 0;
            continue;
        }
        int fd = device_tcp(o.host, o.port);
        if (fd < 0) {
            printf("fail tcp %d %s\n", errno, strerror(errno));
            continue;
        }
        gnutls_session_t s;
        gnutls_init(&s, GNUTLS_CLIENT | (o.early ? GNUTLS_ENABLE_EARLY_DATA : 0));
        const char *bad;
        if (gnutls_priority_set_direct(s, prio, &bad) < 0)
            return device_die("GnuTLS rejects the priority string");
        gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred);
        if (o.sni)
            gnutls_server_name_set(s, GNUTLS_NAME_DNS, o.sni, strlen(o.sni));
        gnutls_session_set_verify_cert(s, o.sni ? o.sni : "localhost", 0);
        if (o.mfl)
            gnutls_record_set_max_recv_size(s, (size_t)o.mfl);
        gnutls_transport_set_int(s, fd);
        if (saved.data)
            gnutls_session_set_data(s, saved.data, saved.size);
        int early = 0;
        if (o.early && saved.data)
            early = gnutls_record_send_early_data(s, o.request, strlen(o.request)) >= 0;

        const char *step = "handshake";
        int ret;
        do
            ret = gnutls_handshake(s);
        while (ret < 0 && !gnutls_error_is_fatal(ret));
        size_t got = 0;
        char tail[8] = "";
        early = early && (gnutls_session_get_flags(s) & GNUTLS_SFLAGS_EARLY_DATA);
        if (ret == 0 && !early) {
            step = "write";
            ret = gnutls_record_send(s, o.request, strlen(o.request));
            ret = ret > 0 ? 0 : ret;
        }
        if (ret == 0) {
            step = "read";
            char buf[4096];
            while ((ret = (int)gnutls_record_recv(s, buf, sizeof buf)) > 0
                   || ret == GNUTLS_E_AGAIN || ret == GNUTLS_E_INTERRUPTED)
                if (ret > 0)
                    device_keep_tail(tail, buf, (size_t)ret, &got);
        }
        if (ret == 0) {
            printf("ok resumed=%d version=%s suite=%s early=%d response=%zu tail=%s\n",
                   gnutls_session_is_resumed(s),
                   gnutls_protocol_get_name(gnutls_protocol_get_version(s)),
                   gnutls_cipher_get_name(gnutls_cipher_get(s)),
                   early, got, tail);
            gnutls_free(saved.data);
            saved.data = NULL;
            saved.size = 0;
            gnutls_session_get_data2(s, &saved);
            gnutls_bye(s, GNUTLS_SHUT_WR);
        } else {
            printf("fail %s %d %s\n", step, ret, gnutls_strerror(ret));
        }
        gnutls_deinit(s);
        close(fd);
    }
    return 0;
}
