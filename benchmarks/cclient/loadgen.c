/*
 * A lean compiled load generator, to check what the Python one (benchmarks/loadgen.py) costs
 * and whether it changes the figures.
 *
 * One thread, epoll (level-triggered), non-blocking sockets, a minimal WebSocket client: the
 * handshake, masked text frames for the subscriptions and the pings, the server's frames
 * parsed from bulk read()s, pings answered, close frames answered. No JSON parser: in every
 * `update` frame it finds each snapshot's "symbol":, "seq": and "ts": in turn, and records
 * receive_time - ts (CLOCK_REALTIME, read once per read(), the same clock as Python's
 * time.time_ns()) for every snapshot of every client, in the log-linear histogram of
 * benchmarks/histogram.py (same buckets: whole µs, exact below 2,048, 1,024 per power of two
 * above), kept for the window and for each of its seconds.
 *
 * It speaks the runner's line protocol on stdin/stdout (see benchmarks/loadgen.py): prints
 * {"event":"ready",...} once every client is subscribed, reads "start", prints a
 * {"event":"progress",...} line once a second, reads "stop", prints {"event":"report",...}
 * with raw counts and sparse histograms (benchmarks/cclient turns them into the Python load
 * generator's report), and exits. It exits at once if stdin closes.
 *
 * Usage: loadgen HOST PORT PATH SUBSCRIPTIONS_FILE PINGS REMOTE CONCURRENCY READY_TIMEOUT_S
 * The file holds one subscribe message (the JSON text to send) per line, one line per client,
 * in subscription order.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* -- the histogram, as benchmarks/histogram.py ------------------------------------------- */

#define LINEAR 2048
#define HALF 1024
#define MAX_EXPONENT 40
#define BUCKETS (LINEAR + MAX_EXPONENT * HALF)

typedef struct {
    uint64_t counts[BUCKETS];
    uint64_t total, sum, negative;
    int64_t min, max;
} histogram;

typedef struct {  /* one second of the window: a coarser record would do, but this is exact */
    uint32_t *counts;
    uint64_t total;
    int64_t max;
} second_histogram;

static int bucket_of(int64_t value) {
    uint64_t v = (uint64_t)value;
    if (v >= (1ULL << (MAX_EXPONENT + 11))) v = (1ULL << (MAX_EXPONENT + 11)) - 1;
    if (v < LINEAR) return (int)v;
    int bits = 64 - __builtin_clzll(v);
    int shift = bits - 11;
    return LINEAR + (shift - 1) * HALF + (int)(v >> shift) - HALF;
}

static int64_t highest_of(int index) {
    int shift = index < LINEAR ? 0 : (index - LINEAR) / HALF + 1;
    int64_t sub = index < LINEAR ? index : (index - LINEAR) % HALF + HALF;
    return ((sub + 1) << shift) - 1;
}

static int64_t percentile(const histogram *h, double q) {
    if (!h->total) return 0;
    if (q >= 100) return h->max;
    double exact = (double)h->total * q / 100.0;
    uint64_t rank = (uint64_t)exact;
    if ((double)rank < exact) rank++;
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            int64_t v = highest_of(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

/* -- state ---------------------------------------------------------------------------------- */

enum { CONNECTING, HANDSHAKING, OPEN, SUBSCRIBED, CLOSED };

typedef struct {
    uint64_t hash;
    int64_t seq;
} seq_slot;

typedef struct {
    int fd;
    int state;
    int index; /* -1: the pinger */
    char *carry; /* bytes of an incomplete frame (or handshake answer) from the last read */
    size_t carry_len, carry_cap;
    const char *subscribe;
    size_t subscribe_len;
    seq_slot *slots;
    int nslots, cap_slots;
    uint64_t timed; /* snapshots timed in the window */
} conn;

static struct {
    const char *host, *path;
    int port;
    struct sockaddr_in address;
    int remote, pings, concurrency;
    double ready_timeout;
    int epoll;
    conn *conns; /* conns[0] is the pinger, conns[1..clients] the clients in order */
    int nconns, clients;
    char *buffer;
    size_t buffer_cap;
    /* set-up */
    int next_connect, in_flight, opened, subscribed;
    /* the pinger's last pong */
    long pong_id;
    int64_t pong_ts, pong_at;
    /* the window's figures (reset at start) */
    uint64_t frames, snapshots, bytes, ticks_seen, advances, unparsed, fragmented;
    uint64_t dropped;
    int close_codes[16][2];
    int nclose_codes;
    histogram window;
    second_histogram *seconds;
    int nseconds;
    int64_t started_ns, offset_ns;
    int measuring;
    /* stdin */
    char line[256];
    size_t line_len;
    int stdin_closed;
    int start_seen, stop_seen, other_seen; /* the runner's commands, as lines on stdin */
    uint64_t mask_state;
} g;

static int64_t wall_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static double monotonic_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "cclient: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *message) {
    fprintf(stderr, "cclient: %s\n", message);
    exit(1);
}

static void *grow(void *p, size_t size) {
    void *q = realloc(p, size);
    if (!q) fail("out of memory");
    return q;
}

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* -- recording ------------------------------------------------------------------------------ */

static void record(int64_t latency_ns, int64_t now) {
    int64_t us = floor_div(latency_ns + g.offset_ns, 1000);
    if (us < 0) {
        g.window.negative++;
        us = 0;
    }
    histogram *h = &g.window;
    int b = bucket_of(us);
    h->counts[b]++;
    h->min = h->total == 0 ? us : (us < h->min ? us : h->min);
    if (us > h->max) h->max = us;
    h->total++;
    h->sum += (uint64_t)us;
    int64_t second = floor_div(now - g.started_ns, 1000000000LL);
    if (second < 0) second = 0;
    if (second >= g.nseconds) {
        int n = (int)second + 1;
        g.seconds = grow(g.seconds, sizeof(second_histogram) * n);
        memset(g.seconds + g.nseconds, 0, sizeof(second_histogram) * (n - g.nseconds));
        g.nseconds = n;
    }
    second_histogram *s = &g.seconds[second];
    if (!s->counts) {
        s->counts = calloc(BUCKETS, sizeof(uint32_t));
        if (!s->counts) fail("out of memory");
    }
    s->counts[b]++;
    s->total++;
    if (us > s->max) s->max = us;
}

static void reset_window(void) {
    g.frames = g.snapshots = g.bytes = g.ticks_seen = g.advances = g.unparsed = 0;
    g.fragmented = 0;
    memset(&g.window, 0, sizeof g.window);
    for (int i = 0; i < g.nseconds; i++) free(g.seconds[i].counts);
    free(g.seconds);
    g.seconds = NULL;
    g.nseconds = 0;
    g.started_ns = wall_ns();
    for (int i = 0; i < g.nconns; i++) g.conns[i].timed = 0;
}

static uint64_t fnv(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

/* The newest seq of `hash` on `c` becomes `seq`; the previous one, or -1. */
static int64_t exchange_seq(conn *c, uint64_t hash, int64_t seq) {
    for (int i = 0; i < c->nslots; i++) {
        if (c->slots[i].hash == hash) {
            int64_t previous = c->slots[i].seq;
            c->slots[i].seq = seq;
            return previous;
        }
    }
    if (c->nslots == c->cap_slots) {
        c->cap_slots = c->cap_slots ? 2 * c->cap_slots : 8;
        c->slots = grow(c->slots, sizeof(seq_slot) * c->cap_slots);
    }
    c->slots[c->nslots++] = (seq_slot){hash, seq};
    return -1;
}

static const char *find(const char *p, const char *end, const char *what, size_t n) {
    return (end - p) >= (ptrdiff_t)n ? memmem(p, (size_t)(end - p), what, n) : NULL;
}

static const char *digits(const char *p, const char *end, int64_t *out) {
    int64_t v = 0;
    const char *start = p;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    if (p < end && *p == '.') { /* a double that came out with a fraction: drop it */
        p++;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    *out = v;
    return p == start ? NULL : p;
}

/* Every snapshot of an update (timed) or snapshot (seqs only) frame. */
static void snapshots(conn *c, const char *p, const char *end, int timed, int64_t now) {
    for (;;) {
        const char *name = find(p, end, "\"symbol\":\"", 10);
        if (!name) return;
        name += 10;
        const char *close = memchr(name, '"', (size_t)(end - name));
        if (!close) return;
        uint64_t hash = fnv(name, (size_t)(close - name));
        const char *at = find(close, end, "\"seq\":", 6);
        int64_t seq = 0, ts = 0;
        const char *after = at ? digits(at + 6, end, &seq) : NULL;
        at = after ? find(after, end, "\"ts\":", 5) : NULL;
        after = at ? digits(at + 5, end, &ts) : NULL;
        if (!after) {
            g.unparsed++;
            return;
        }
        int64_t previous = exchange_seq(c, hash, seq);
        if (timed) {
            if (previous >= 0) {
                g.ticks_seen += (uint64_t)(seq - previous);
                g.advances++;
            }
            g.snapshots++;
            c->timed++;
            record(now - ts, now);
        }
        p = after;
    }
}

/* -- writing -------------------------------------------------------------------------------- */

static uint32_t next_mask(void) {
    uint64_t x = g.mask_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    g.mask_state = x;
    return (uint32_t)(x >> 16);
}

static void close_conn(conn *c, int lost);

static void send_frame(conn *c, int opcode, const char *payload, size_t n) {
    if (c->state == CLOSED) return;
    size_t header = n < 126 ? 2 : (n < 65536 ? 4 : 10);
    char *frame = malloc(header + 4 + n);
    if (!frame) fail("out of memory");
    frame[0] = (char)(0x80 | opcode);
    if (n < 126) {
        frame[1] = (char)(0x80 | n);
    } else if (n < 65536) {
        frame[1] = (char)(0x80 | 126);
        frame[2] = (char)(n >> 8);
        frame[3] = (char)n;
    } else {
        frame[1] = (char)(0x80 | 127);
        for (int i = 0; i < 8; i++) frame[2 + i] = (char)((uint64_t)n >> (56 - 8 * i));
    }
    uint32_t mask = next_mask();
    unsigned char key[4] = {mask >> 24, mask >> 16, mask >> 8, mask};
    memcpy(frame + header, key, 4);
    for (size_t i = 0; i < n; i++) frame[header + 4 + i] = (char)(payload[i] ^ key[i & 3]);
    ssize_t sent = write(c->fd, frame, header + 4 + n);
    free(frame);
    if (sent != (ssize_t)(header + 4 + n)) {
        /* Our frames are small and the socket's buffer empty: a short write means trouble. */
        fprintf(stderr, "cclient: client %d: write of %zu bytes failed (%zd): %s\n", c->index,
                header + 4 + n, sent, sent < 0 ? strerror(errno) : "short write");
        close_conn(c, 1);
    }
}

/* -- connections ---------------------------------------------------------------------------- */

static void watch(conn *c, uint32_t events, int op) {
    struct epoll_event e = {.events = events, .data.ptr = c};
    if (epoll_ctl(g.epoll, op, c->fd, &e) < 0) die("epoll_ctl");
}

static void close_conn(conn *c, int lost) {
    if (c->state == CLOSED) return;
    if (c->state < OPEN) g.in_flight--;
    if (lost && c->state >= OPEN && c->index >= 0) g.dropped++;
    if (lost && c->state < SUBSCRIBED && !g.measuring) {
        fprintf(stderr, "cclient: client %d lost during set-up\n", c->index);
        exit(1);
    }
    c->state = CLOSED;
    epoll_ctl(g.epoll, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static void start_connect(conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    g.in_flight++;
    if (connect(c->fd, (struct sockaddr *)&g.address, sizeof g.address) < 0 &&
        errno != EINPROGRESS)
        die("connect");
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void send_handshake(conn *c) {
    int error = 0;
    socklen_t size = sizeof error;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &size);
    if (error) {
        errno = error;
        die("connect");
    }
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char key[25];
    for (int i = 0; i < 21; i++) key[i] = alphabet[next_mask() & 63];
    key[21] = alphabet[next_mask() & 48]; /* 16 bytes: the last sextet has 2 bits */
    key[22] = key[23] = '=';
    key[24] = 0;
    char request[512];
    int n = snprintf(request, sizeof request,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     g.path, g.host, g.port, key);
    if (write(c->fd, request, (size_t)n) != n) die("write (handshake)");
    c->state = HANDSHAKING;
    watch(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
}

static void on_text(conn *c, const char *p, size_t n, int64_t now) {
    const char *end = p + n;
    if (n >= 16 && memcmp(p, "{\"type\":\"update\"", 16) == 0) {
        snapshots(c, p, end, c->index >= 0, now);
    } else if (n >= 18 && memcmp(p, "{\"type\":\"snapshot\"", 18) == 0) {
        snapshots(c, p, end, 0, now);
    } else if (n >= 20 && memcmp(p, "{\"type\":\"subscribed\"", 20) == 0) {
        if (c->state == OPEN) {
            c->state = SUBSCRIBED;
            g.subscribed++;
        }
    } else if (n >= 14 && memcmp(p, "{\"type\":\"pong\"", 14) == 0) {
        const char *at = find(p, end, "\"id\":", 5);
        int64_t id = -1, ts = 0;
        if (at && digits(at + 5, end, &id)) {
            at = find(at, end, "\"ts\":", 5);
            if (at && digits(at + 5, end, &ts)) {
                g.pong_id = (long)id;
                g.pong_ts = ts;
                g.pong_at = now;
            }
        }
    } else if (n >= 15 && memcmp(p, "{\"type\":\"error\"", 15) == 0) {
        fprintf(stderr, "cclient: client %d: %.*s\n", c->index, (int)(n > 300 ? 300 : n), p);
    }
}

/* Parse the frames in buf[0..len); return how many bytes were consumed. */
static size_t frames(conn *c, char *buf, size_t len, int64_t now) {
    size_t position = 0;
    while (len - position >= 2 && c->state != CLOSED) {
        unsigned char *f = (unsigned char *)buf + position;
        size_t second = f[1] & 0x7F, start, length;
        if (second < 126) {
            start = 2;
            length = second;
        } else if (second == 126) {
            if (len - position < 4) break;
            start = 4;
            length = ((size_t)f[2] << 8) | f[3];
        } else {
            if (len - position < 10) break;
            start = 10;
            length = 0;
            for (int i = 0; i < 8; i++) length = (length << 8) | f[2 + i];
        }
        if (len - position < start + length) {
            size_t need = start + length + 65536;
            if (need > g.buffer_cap) { /* a frame larger than the read buffer: make room */
                g.buffer_cap = need;
                g.buffer = grow(g.buffer, g.buffer_cap);
            }
            break;
        }
        const char *payload = (const char *)f + start;
        int opcode = f[0] & 0x0F;
        position += start + length;
        g.frames++;
        g.bytes += length;
        if (!(f[0] & 0x80) || opcode == 0) {
            g.fragmented++; /* no server here fragments; counted, not reassembled */
        } else if (opcode == 1) {
            on_text(c, payload, length, now);
        } else if (opcode == 9) {
            send_frame(c, 0xA, payload, length);
        } else if (opcode == 8) {
            int code = length >= 2 ? (((unsigned char)payload[0]) << 8) | (unsigned char)payload[1]
                                   : 1005;
            int i = 0;
            while (i < g.nclose_codes && g.close_codes[i][0] != code) i++;
            if (i == g.nclose_codes && i < 16) g.close_codes[g.nclose_codes++][0] = code;
            if (i < 16) g.close_codes[i][1]++;
            send_frame(c, 8, payload, length >= 2 ? 2 : 0);
            close_conn(c, 1);
        }
    }
    return position;
}

static void on_readable(conn *c) {
    size_t have = c->carry_len;
    if (g.buffer_cap < have + 65536) {
        g.buffer_cap = have + 262144;
        g.buffer = grow(g.buffer, g.buffer_cap);
    }
    memcpy(g.buffer, c->carry, have);
    ssize_t n = read(c->fd, g.buffer + have, g.buffer_cap - have);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        close_conn(c, 1);
        return;
    }
    if (n == 0) {
        close_conn(c, 1);
        return;
    }
    int64_t now = wall_ns();
    size_t len = have + (size_t)n, used = 0;
    if (c->state == HANDSHAKING) {
        char *end = memmem(g.buffer, len, "\r\n\r\n", 4);
        if (!end) {
            used = 0;
        } else {
            if (len < 12 || memcmp(g.buffer, "HTTP/1.1 101", 12) != 0) {
                char *eol = memmem(g.buffer, len, "\r\n", 2);
                fprintf(stderr, "cclient: upgrade refused: %.*s\n", (int)(eol - g.buffer),
                        g.buffer);
                exit(1);
            }
            used = (size_t)(end - g.buffer) + 4;
            c->state = OPEN;
            g.in_flight--;
            g.opened++;
        }
    }
    if (c->state >= OPEN && c->state != CLOSED) used += frames(c, g.buffer + used, len - used, now);
    if (c->state == CLOSED) return;
    size_t left = len - used;
    if (left > c->carry_cap) {
        c->carry_cap = left;
        c->carry = grow(c->carry, c->carry_cap);
    }
    memmove(c->carry, g.buffer + used, left);
    c->carry_len = left;
}

/* -- stdin ---------------------------------------------------------------------------------- */

static void on_stdin(void) {
    char chunk[256];
    ssize_t n = read(0, chunk, sizeof chunk);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        g.stdin_closed = 1;
        return;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (chunk[i] == '\n') {
            g.line[g.line_len] = 0;
            if (strcmp(g.line, "start") == 0)
                g.start_seen = 1;
            else if (strcmp(g.line, "stop") == 0)
                g.stop_seen = 1;
            else
                g.other_seen = 1;
            g.line_len = 0;
        } else if (g.line_len < sizeof g.line - 1) {
            g.line[g.line_len++] = chunk[i];
        }
    }
}

static conn stdin_marker;

static void poll_once(int timeout_ms) {
    struct epoll_event events[512];
    int n = epoll_wait(g.epoll, events, 512, timeout_ms);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
        conn *c = events[i].data.ptr;
        if (c == &stdin_marker) {
            on_stdin();
            continue;
        }
        if (c->state == CLOSED) continue;
        if (c->state == CONNECTING) {
            send_handshake(c);
            continue;
        }
        if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c);
    }
    while (g.next_connect < g.nconns && g.in_flight < g.concurrency)
        start_connect(&g.conns[g.next_connect++]);
}

static void check_stdin(void) {
    if (g.stdin_closed) exit(0); /* the runner is gone */
}

/* -- the run -------------------------------------------------------------------------------- */

static void load_subscriptions(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    size_t cap = 0;
    char *line = NULL;
    ssize_t n;
    int count = 0, cap_conns = 1024;
    g.conns = calloc((size_t)cap_conns, sizeof(conn));
    g.conns[0].index = -1; /* the pinger */
    g.nconns = 1;
    while ((n = getline(&line, &cap, f)) > 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (n == 0) continue;
        if (g.nconns == cap_conns) {
            cap_conns *= 2;
            g.conns = grow(g.conns, sizeof(conn) * (size_t)cap_conns);
        }
        conn *c = &g.conns[g.nconns++];
        memset(c, 0, sizeof *c);
        c->index = count++;
        c->subscribe = strdup(line);
        c->subscribe_len = (size_t)n;
    }
    free(line);
    fclose(f);
    g.clients = count;
}

static int raise_open_files(int needed) {
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    rlim_t want = r.rlim_cur > (rlim_t)needed ? r.rlim_cur : (rlim_t)needed;
    if (r.rlim_max != RLIM_INFINITY && want > r.rlim_max) want = r.rlim_max;
    if (want > r.rlim_cur) {
        r.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &r);
    }
    getrlimit(RLIMIT_NOFILE, &r);
    return (int)r.rlim_cur;
}

static int compare_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void print_sparse(const char *name, const uint64_t *c64, const uint32_t *c32) {
    printf("\"%s\":[", name);
    int first = 1;
    for (int i = 0; i < BUCKETS; i++) {
        uint64_t v = c64 ? c64[i] : c32[i];
        if (v) {
            printf(first ? "%d" : ",%d", i);
            first = 0;
        }
    }
    printf("],\"counts\":[");
    first = 1;
    for (int i = 0; i < BUCKETS; i++) {
        uint64_t v = c64 ? c64[i] : c32[i];
        if (v) {
            printf(first ? "%llu" : ",%llu", (unsigned long long)v);
            first = 0;
        }
    }
    printf("]");
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT PATH SUBSCRIPTIONS PINGS REMOTE CONCURRENCY "
                        "READY_TIMEOUT\n", argv[0]);
        return 2;
    }
    g.host = argv[1];
    g.port = atoi(argv[2]);
    g.path = argv[3];
    g.pings = atoi(argv[5]);
    g.remote = atoi(argv[6]);
    g.concurrency = atoi(argv[7]);
    g.ready_timeout = atof(argv[8]);
    g.mask_state = (uint64_t)wall_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ULL;
    if (!g.mask_state) g.mask_state = 1;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *found;
    if (getaddrinfo(g.host, NULL, &hints, &found) != 0) fail("cannot resolve the host");
    g.address = *(struct sockaddr_in *)found->ai_addr;
    g.address.sin_port = htons((uint16_t)g.port);
    freeaddrinfo(found);
    g.started_ns = wall_ns(); /* updates timed during the set-up are dropped at start */
    load_subscriptions(argv[4]);
    int limit = raise_open_files(g.nconns + 256);
    g.buffer_cap = 262144;
    g.buffer = malloc(g.buffer_cap);
    g.epoll = epoll_create1(EPOLL_CLOEXEC);
    if (g.epoll < 0) die("epoll_create1");
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = &stdin_marker};
    if (epoll_ctl(g.epoll, EPOLL_CTL_ADD, 0, &e) < 0) die("epoll_ctl (stdin)");

    double started = monotonic_s(), deadline = started + g.ready_timeout, last_note = started;
    /* Every handshake first, then every subscription at once (as loadgen.py does). */
    while (g.opened < g.nconns) {
        poll_once(100);
        check_stdin();
        if (monotonic_s() > deadline) fail("the clients did not all connect in time");
        if (monotonic_s() - last_note >= 2.0) {
            last_note = monotonic_s();
            printf("{\"event\":\"connecting\",\"open\":%d,\"subscribed\":0,\"of\":%d}\n",
                   g.opened - 1, g.clients);
            fflush(stdout);
        }
    }
    for (int i = 1; i < g.nconns; i++)
        send_frame(&g.conns[i], 1, g.conns[i].subscribe, g.conns[i].subscribe_len);
    while (g.subscribed < g.clients) {
        poll_once(100);
        check_stdin();
        if (monotonic_s() > deadline) fail("the clients were not all subscribed in time");
        if (monotonic_s() - last_note >= 2.0) {
            last_note = monotonic_s();
            printf("{\"event\":\"connecting\",\"open\":%d,\"subscribed\":%d,\"of\":%d}\n",
                   g.opened - 1, g.subscribed, g.clients);
            fflush(stdout);
        }
    }
    /* The clock offset from ping round trips spaced apart, as benchmarks/clock.py does. */
    int64_t *rtts = calloc((size_t)(g.pings > 0 ? g.pings : 1), sizeof(int64_t));
    int samples = 0;
    int64_t best_rtt = -1, best_offset = 0;
    conn *pinger = &g.conns[0];
    pinger->state = SUBSCRIBED; /* it subscribes to nothing */
    for (int i = 0; i < g.pings; i++) {
        char ping[64];
        int n = snprintf(ping, sizeof ping, "{\"op\":\"ping\",\"id\":%d}", 1000 + i);
        g.pong_id = -1;
        int64_t sent = wall_ns();
        send_frame(pinger, 1, ping, (size_t)n);
        double until = monotonic_s() + 10;
        while (g.pong_id != 1000 + i && monotonic_s() < until) {
            poll_once(10);
            check_stdin();
        }
        if (g.pong_id == 1000 + i) {
            int64_t rtt = g.pong_at - sent;
            rtts[samples++] = rtt;
            if (best_rtt < 0 || rtt < best_rtt) {
                best_rtt = rtt;
                best_offset = g.pong_ts - floor_div(sent + g.pong_at, 2);
            }
        }
        double pause = monotonic_s() + 0.01;
        while (monotonic_s() < pause) poll_once(1);
    }
    qsort(rtts, (size_t)samples, sizeof(int64_t), compare_i64);
    printf("{\"event\":\"ready\",\"clients\":%d,\"slow\":0,\"connect_seconds\":%.3f,"
           "\"open_files_limit\":%d,\"pid\":%d,\"clock\":",
           g.clients, monotonic_s() - started, limit, (int)getpid());
    if (samples)
        printf("{\"offset_ns\":%lld,\"uncertainty_ns\":%lld,\"rtt_min_ns\":%lld,"
               "\"rtt_median_ns\":%lld,\"samples\":%d}}\n",
               (long long)best_offset, (long long)(best_rtt / 2), (long long)best_rtt,
               (long long)rtts[samples / 2], samples);
    else
        printf("null}\n");
    fflush(stdout);
    if (g.remote && !samples) fail("no pong came back: cannot correct for the clock offset");

    /* Warm-up: record as in the window (the figures are reset at start). */
    reset_window();
    while (!g.start_seen) {
        poll_once(100);
        if (g.other_seen || g.stop_seen) return 0; /* as loadgen.py: anything else ends it */
        check_stdin();
    }
    reset_window();
    g.dropped = 0;
    g.nclose_codes = 0;
    g.offset_ns = g.remote ? -best_offset : 0;
    g.measuring = 1;
    double cpu_start = cpu_s(), wall_start = monotonic_s();
    double last_cpu = cpu_start, last_wall = wall_start;
    uint64_t last_snapshots = 0;
    while (!g.stop_seen) {
        poll_once(20);
        check_stdin();
        double now = monotonic_s();
        if (now - last_wall >= 1.0) {
            double cpu = cpu_s();
            printf("{\"event\":\"progress\",\"elapsed\":%.2f,\"snapshots_per_s\":%.0f,"
                   "\"p99_us\":%lld,\"client_cpu\":%.1f,\"dropped\":%llu}\n",
                   now - wall_start, (g.snapshots - last_snapshots) / (now - last_wall),
                   (long long)percentile(&g.window, 99), 100 * (cpu - last_cpu) / (now - last_wall),
                   (unsigned long long)g.dropped);
            fflush(stdout);
            last_cpu = cpu;
            last_wall = now;
            last_snapshots = g.snapshots;
        }
    }
    double wall = monotonic_s() - wall_start, cpu = cpu_s() - cpu_start;
    int with_samples = 0;
    for (int i = 1; i < g.nconns; i++) with_samples += g.conns[i].timed > 0;
    printf("{\"event\":\"report\",\"seconds\":%.6f,\"cpu_seconds\":%.6f,\"frames\":%llu,"
           "\"snapshots\":%llu,\"bytes\":%llu,\"ticks_seen\":%llu,\"advances\":%llu,"
           "\"unparsed\":%llu,\"fragmented\":%llu,\"dropped\":%llu,\"clients\":%d,"
           "\"with_samples\":%d,"
           "\"close_codes\":{",
           wall, cpu, (unsigned long long)g.frames, (unsigned long long)g.snapshots,
           (unsigned long long)g.bytes, (unsigned long long)g.ticks_seen,
           (unsigned long long)g.advances, (unsigned long long)g.unparsed,
           (unsigned long long)g.fragmented, (unsigned long long)g.dropped, g.clients,
           with_samples);
    for (int i = 0; i < g.nclose_codes; i++)
        printf(i ? ",\"%d\":%d" : "\"%d\":%d", g.close_codes[i][0], g.close_codes[i][1]);
    printf("},\"histogram\":{");
    print_sparse("buckets", g.window.counts, NULL);
    printf(",\"total\":%llu,\"min\":%lld,\"max\":%lld,\"sum\":%llu,\"negative\":%llu},"
           "\"seconds_histograms\":[",
           (unsigned long long)g.window.total, (long long)g.window.min,
           (long long)g.window.max, (unsigned long long)g.window.sum,
           (unsigned long long)g.window.negative);
    int first = 1;
    for (int s = 0; s < g.nseconds; s++) {
        if (!g.seconds[s].total) continue;
        printf(first ? "{" : ",{");
        first = 0;
        printf("\"second\":%d,\"count\":%llu,\"max\":%lld,", s,
               (unsigned long long)g.seconds[s].total, (long long)g.seconds[s].max);
        print_sparse("buckets", NULL, g.seconds[s].counts);
        printf("}");
    }
    printf("]}\n");
    fflush(stdout);
    return 0;
}
