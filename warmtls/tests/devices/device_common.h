/* What the device clients share: options, the TCP connect, the request. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>


struct device_opts {
    const char *host, *port, *ca;
    const char *version; /* "1.2", "1.3" or "any" */
    const char *suites;  /* the library's own names, NULL = its defaults */
    const char *sni;     /* NULL = no server_name extension */
    int p256_only;       /* offer (and key-share) P-256 only */
    int mfl;             /* RFC 6066 max_fragment_length to request, 0 = none */
    int early;           /* send the request as TLS 1.3 early data when resuming */
    char request[256];   /* GET PATH (-q, default /) */
};

static int device_die(const char *why)
{
    fprintf(stderr, "device: %s\n", why);
    return 2;
}

static int device_parse(int argc, char **argv, struct device_opts *o)
{
    memset(o, 0, sizeof *o);
    o->version = "any";
    int c;
    const char *path = "/";
    while ((c = getopt(argc, argv, "v:s:n:g:m:eq:")) != -1) {
        switch (c) {
        case 'v': o->version = optarg; break;
        case 's': o->suites = optarg; break;
        case 'n': o->sni = optarg; break;
        case 'g': o->p256_only = !strcmp(optarg, "p256"); break;
        case 'm': o->mfl = atoi(optarg); break;
        case 'e': o->early = 1; break;
        case 'q': path = optarg; break;
        default: return device_die("usage: HOST PORT CA [-v 1.2|1.3|any] [-s SUITES] [-n SNI] [-g p256] [-m LEN] [-e] [-q PATH]");
        }
    }
    if (argc - optind != 3)
        return device_die("usage: HOST PORT CA [options]");
    o->host = argv[optind];
    o->port = argv[optind + 1];
    o->ca = argv[optind + 2];
    if (o->mfl && o->mfl != 512 && o->mfl != 1024 && o->mfl != 2048 && o->mfl != 4096)
        return device_die("-m takes 512, 1024, 2048 or 4096");
    snprintf(o->request, sizeof o->request, "GET %.200s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
    setvbuf(stdout, NULL, _IOLBF, 0);
    return 0;
}

/* A TCP connection with TCP_NODELAY, as a device makes it; -1 and errno on failure. */
static int device_tcp(const char *host, const char *port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    if (getaddrinfo(host, port, &hints, &ai) != 0)
        return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    int one = 1;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Keep the last 5 bytes of the response (printable) and count them all. */
static void device_keep_tail(char tail[8], const char *buf, size_t n, size_t *total)
{
    *total += n;
    size_t keep = n < 5 ? n : 5, have = strlen(tail);
    if (have + keep > 5) {
        memmove(tail, tail + (have + keep - 5), 5 - keep);
        have = 5 - keep;
    }
    for (size_t i = 0; i < keep; i++) {
        char ch = buf[n - keep + i];
        tail[have + i] = (ch > ' ' && ch < 127) ? ch : '.';
    }
    tail[have + keep] = 0;
}
