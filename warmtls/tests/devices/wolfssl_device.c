/* A device's TLS client on wolfSSL, as a device maker writes it: library
 * defaults unless an option says otherwise, one saved session offered on the
 * next connection. Driven line by line on stdin: each "connect" line makes one
 * connection (handshake, GET /, read to close_notify) and prints one result
 * line; the saved session survives between lines, so the driver can restart
 * the server in between.
 *
 *   wolfssl_device HOST PORT CA [-v 1.2|1.3|any] [-s SUITES] [-g p256]
 *                  [-n SNI] [-m 512|1024|2048|4096] [-q PATH]
 *
 * Result: "ok resumed=0|1 version=V suite=S early=0 response=N" or
 *         "fail STEP CODE TEXT". Never exits on a failed connection. */
#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/error-ssl.h>

#include "device_common.h"

int main(int argc, char **argv)
{
    struct device_opts o;
    if (device_parse(argc, argv, &o) != 0)
        return 2;
    wolfSSL_Init();
    WOLFSSL_METHOD *method = !strcmp(o.version, "1.2") ? wolfTLSv1_2_client_method()
                           : !strcmp(o.version, "1.3") ? wolfTLSv1_3_client_method()
                                                       : wolfSSLv23_client_method();
    WOLFSSL_CTX *ctx = wolfSSL_CTX_new(method);
    if (!ctx || wolfSSL_CTX_load_verify_locations(ctx, o.ca, NULL) != WOLFSSL_SUCCESS)
        return device_die("cannot load the CA file");
    if (o.suites && wolfSSL_CTX_set_cipher_list(ctx, o.suites) != WOLFSSL_SUCCESS)
        return device_die("wolfSSL does not know these cipher suites");
    if (o.early)
        return device_die("this wolfSSL build has no early data (WOLFSSL_EARLY_DATA)");

    WOLFSSL_SESSION *saved = NULL;
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "forget", 6)) {
            wolfSSL_SESSION_free(saved);
            saved = NULL;
            continue;
        }
        int fd = device_tcp(o.host, o.port);
        if (fd < 0) {
            printf("fail tcp %d %s\n", errno, strerror(errno));
            continue;
        }
        WOLFSSL *ssl = wolfSSL_new(ctx);
        wolfSSL_set_fd(ssl, fd);
        if (o.sni)
            wolfSSL_UseSNI(ssl, WOLFSSL_SNI_HOST_NAME, o.sni, (word16)strlen(o.sni));
        if (o.p256_only) {
            wolfSSL_UseSupportedCurve(ssl, WOLFSSL_ECC_SECP256R1);
            if (strcmp(o.version, "1.2"))
                wolfSSL_UseKeyShare(ssl, WOLFSSL_ECC_SECP256R1);
        }
        if (o.mfl) {
            unsigned char code = o.mfl == 512 ? WOLFSSL_MFL_2_9 : o.mfl == 1024 ? WOLFSSL_MFL_2_10
                               : o.mfl == 2048 ? WOLFSSL_MFL_2_11 : WOLFSSL_MFL_2_12;
            wolfSSL_UseMaxFragment(ssl, code);
        }
        if (saved)
            wolfSSL_set_session(ssl, saved);

        char err[WOLFSSL_MAX_ERROR_SZ];
        const char *step = "handshake";
        int ret = wolfSSL_connect(ssl);
        size_t got = 0;
        char tail[8] = "";
        if (ret == WOLFSSL_SUCCESS) {
            step = "write";
            ret = wolfSSL_write(ssl, o.request, (int)strlen(o.request)) > 0 ? WOLFSSL_SUCCESS : -1;
        }
        if (ret == WOLFSSL_SUCCESS) {
            step = "read";
            char buf[4096];
            int n;
            while ((n = wolfSSL_read(ssl, buf, sizeof buf)) > 0)
                device_keep_tail(tail, buf, (size_t)n, &got);
            ret = wolfSSL_get_error(ssl, n) == WOLFSSL_ERROR_ZERO_RETURN ? WOLFSSL_SUCCESS : -1;
        }
        if (ret == WOLFSSL_SUCCESS) {
            printf("ok resumed=%d version=%s suite=%s early=0 response=%zu tail=%s\n",
                   wolfSSL_session_reused(ssl), wolfSSL_get_version(ssl),
                   wolfSSL_get_cipher_name(ssl), got, tail);
            wolfSSL_SESSION_free(saved);
            saved = wolfSSL_get1_session(ssl);
            wolfSSL_shutdown(ssl);
        } else {
            int code = wolfSSL_get_error(ssl, ret);
            wolfSSL_ERR_error_string_n((unsigned long)code, err, sizeof err);
            printf("fail %s %d %s\n", step, code, err);
        }
        wolfSSL_free(ssl);
        close(fd);
    }
    wolfSSL_SESSION_free(saved);
    wolfSSL_CTX_free(ctx);
    wolfSSL_Cleanup();
    return 0;
}
