/* A device's TLS client on Mbed TLS 2.28 (TLS 1.2 only: 2.28 has no TLS 1.3),
 * as a device maker writes it; same options and stdin protocol as
 * wolfssl_device.c. 2.28 has no public "session reused" call: the handshake
 * is stepped and its internal resume flag read before it is freed. */
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/ssl_internal.h>

#include "device_common.h"

int main(int argc, char **argv)
{
    struct device_opts o;
    if (device_parse(argc, argv, &o) != 0)
        return 2;
    if (!strcmp(o.version, "1.3") || o.early)
        return device_die("Mbed TLS 2.28 has no TLS 1.3");
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt ca;
    mbedtls_ssl_config conf;
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    mbedtls_x509_crt_init(&ca);
    mbedtls_ssl_config_init(&conf);
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, NULL, 0) != 0
        || mbedtls_x509_crt_parse_file(&ca, o.ca) != 0
        || mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                       MBEDTLS_SSL_PRESET_DEFAULT) != 0)
        return device_die("cannot set up (CA file?)");
    mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &drbg);
    mbedtls_ssl_conf_ca_chain(&conf, &ca, NULL);
    mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    int suites[2] = {0, 0};
    if (o.suites) {
        suites[0] = mbedtls_ssl_get_ciphersuite_id(o.suites);
        if (!suites[0])
            return device_die("Mbed TLS does not know this cipher suite");
        mbedtls_ssl_conf_ciphersuites(&conf, suites);
    }
    static const mbedtls_ecp_group_id p256[] = {MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_NONE};
    if (o.p256_only)
        mbedtls_ssl_conf_curves(&conf, p256);
    if (o.mfl)
        mbedtls_ssl_conf_max_frag_len(&conf, o.mfl == 512 ? MBEDTLS_SSL_MAX_FRAG_LEN_512
                                           : o.mfl == 1024 ? MBEDTLS_SSL_MAX_FRAG_LEN_1024
                                           : o.mfl == 2048 ? MBEDTLS_SSL_MAX_FRAG_LEN_2048
                                                           : MBEDTLS_SSL_MAX_FRAG_LEN_4096);

    mbedtls_ssl_session saved;
    mbedtls_ssl_session_init(&saved);
    int have_saved = 0;
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "forget", 6)) {
            mbedtls_ssl_session_free(&saved);
            mbedtls_ssl_session_init(&saved);
            have_saved = 0;
            continue;
        }
        mbedtls_net_context net;
        net.fd = device_tcp(o.host, o.port);
        if (net.fd < 0) {
            printf("fail tcp %d %s\n", errno, strerror(errno));
            continue;
        }
        mbedtls_ssl_context ssl;
        mbedtls_ssl_init(&ssl);
        mbedtls_ssl_setup(&ssl, &conf);
        if (o.sni) /* without one: no server_name extension, and no name check */
            mbedtls_ssl_set_hostname(&ssl, o.sni);
        mbedtls_ssl_set_bio(&ssl, &net, mbedtls_net_send, mbedtls_net_recv, NULL);
        if (have_saved)
            mbedtls_ssl_set_session(&ssl, &saved);

        const char *step = "handshake";
        int ret = 0, resumed = 0;
        while (ret == 0 && ssl.state != MBEDTLS_SSL_HANDSHAKE_OVER) {
            if (ssl.handshake)
                resumed = ssl.handshake->resume;
            ret = mbedtls_ssl_handshake_step(&ssl);
        }
        size_t got = 0;
        char tail[8] = "";
        if (ret == 0) {
            step = "write";
            ret = mbedtls_ssl_write(&ssl, (const unsigned char *)o.request, strlen(o.request));
            ret = ret > 0 ? 0 : ret;
        }
        if (ret == 0) {
            step = "read";
            unsigned char buf[4096];
            while ((ret = mbedtls_ssl_read(&ssl, buf, sizeof buf)) > 0)
                device_keep_tail(tail, (const char *)buf, (size_t)ret, &got);
            if (ret == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY)
                ret = 0;
        }
        if (ret == 0) {
            printf("ok resumed=%d version=%s suite=%s early=0 response=%zu tail=%s\n", resumed,
                   mbedtls_ssl_get_version(&ssl), mbedtls_ssl_get_ciphersuite(&ssl), got, tail);
            mbedtls_ssl_session_free(&saved);
            mbedtls_ssl_session_init(&saved);
            have_saved = mbedtls_ssl_get_session(&ssl, &saved) == 0;
            mbedtls_ssl_close_notify(&ssl);
        } else {
            char err[128];
            mbedtls_strerror(ret, err, sizeof err);
            printf("fail %s %d %s\n", step, ret, err);
        }
        mbedtls_ssl_free(&ssl);
        mbedtls_net_free(&net);
    }
    return 0;
}
