/* yogurt's compiled front end: one CNI call handed to the node agent, without an interpreter.
 *
 * The same front end as frontend.py, for the exec a runtime pays per container: the same wire
 * format (protocol.py), the same decisions (frontend.decide), the same bounds; what it saves is
 * the Python start (~10-20 ms an exec; this is ~1 ms). Installed as the `yogurt` the runtime execs,
 * with the full plugin beside it as `yogurt-full` (dist/yogurt, or the Python entry point): every
 * call it does not relay to an agent, it hands to that one by exec, stdin and all:
 *
 *   no CNI_COMMAND (the admin commands), VERSION         exec yogurt-full, untouched
 *   a config this scanner does not read (not a JSON      exec yogurt-full, which reads it
 *     object of ASCII, an escape in a key or stateDir)     (and forwards it itself)
 *   no agent on stateDir / not its stateDir               exec yogurt-full, told not to ask again
 *   no answer in time: DEL                                exec yogurt-full, told not to ask again
 *   no answer in time: ADD, CHECK, GC, STATUS             CNI error 11, "try again later"
 *   an answer                                             its stdout, stderr and exit code
 *
 * "Told not to ask again" is YOGURT_NO_AGENT=1 in the exec'd plugin's environment (entry.py):
 * without it, a DEL the agent did not answer would wait for the agent a second time.
 *
 * Build: cc -O2 -static -o yogurt frontend.c (`make front`: dist/yogurt-front). Linux only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

#define FULL_PLUGIN "yogurt-full"
#define SOCKET_NAME "agent.sock"
#define DEFAULT_STATE_DIR "/run/cni-yogurt"
#define MAX_REQUEST (4u << 20) /* protocol.MAX_REQUEST */
#define MAX_ANSWER (16u << 20) /* protocol.MAX_ANSWER */
#define DEFAULT_ANSWER_TIMEOUT 60.0
#define MAX_DEPTH 64

/* -- the network config: just the three keys the front end needs -------------------------- */

struct span {
    const char *at;
    size_t len;
};

struct config {
    struct span state_dir, cni_version; /* .at NULL: absent */
    double answer_timeout;
};

struct scan {
    const char *p, *end;
};

static void skip_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* A JSON string at s->p; its contents (without quotes) in *out, *escaped set if it has an escape. */
static int scan_string(struct scan *s, struct span *out, int *escaped)
{
    if (s->p >= s->end || *s->p != '"')
        return -1;
    const char *start = ++s->p;
    *escaped = 0;
    while (s->p < s->end && *s->p != '"') {
        unsigned char c = (unsigned char)*s->p;
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            *escaped = 1;
            if (++s->p >= s->end)
                return -1;
            if (*s->p == 'u') {
                for (int i = 0; i < 4; i++)
                    if (++s->p >= s->end || !strchr("0123456789abcdefABCDEF", *s->p) || !*s->p)
                        return -1;
            } else if (!*s->p || !strchr("\"\\/bfnrt", *s->p)) {
                return -1;
            }
        }
        s->p++;
    }
    if (s->p >= s->end)
        return -1;
    out->at = start;
    out->len = (size_t)(s->p - start);
    s->p++;
    return 0;
}

static int digits(struct scan *s)
{
    const char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start ? 0 : -1;
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(struct scan *s)
{
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (digits(s))
        return -1;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (digits(s))
            return -1;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (digits(s))
            return -1;
    }
    return 0;
}

static int scan_value(struct scan *s, int depth);

static int scan_word(struct scan *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n))
        return -1;
    s->p += n;
    return 0;
}

/* An object or array at s->p; for the top-level object (cfg not NULL) the keys we need. */
static int scan_container(struct scan *s, int depth, struct config *cfg)
{
    char close = *s->p == '{' ? '}' : ']';
    int object = close == '}';
    if (depth > MAX_DEPTH)
        return -1;
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }
    for (;;) {
        struct span key = {0}, value;
        int key_escaped = 0, value_escaped;
        if (object) {
            skip_ws(s);
            if (scan_string(s, &key, &key_escaped))
                return -1;
            if (cfg && key_escaped)
                return -1; /* "state\u0044ir" is stateDir too: leave such configs to yogurt-full */
            skip_ws(s);
            if (s->p >= s->end || *s->p++ != ':')
                return -1;
        }
        skip_ws(s);
        const char *value_at = s->p;
        if (cfg && object) {
            int is_state_dir = key.len == 8 && !memcmp(key.at, "stateDir", 8);
            int is_version = key.len == 10 && !memcmp(key.at, "cniVersion", 10);
            int is_timeout = key.len == 12 && !memcmp(key.at, "agentTimeout", 12);
            if (is_state_dir || is_version) {
                if (scan_string(s, &value, &value_escaped) || value_escaped)
                    return -1; /* not a plain string: yogurt-full says what is wrong */
                *(is_state_dir ? &cfg->state_dir : &cfg->cni_version) = value;
            } else if (scan_value(s, depth + 1)) {
                return -1;
            }
            if (is_timeout) {
                cfg->answer_timeout = DEFAULT_ANSWER_TIMEOUT; /* frontend.answer_timeout */
                if (*value_at == '-' || (*value_at >= '0' && *value_at <= '9')) {
                    char number[64];
                    size_t n = (size_t)(s->p - value_at);
                    if (n < sizeof number) {
                        memcpy(number, value_at, n);
                        number[n] = 0;
                        double v = strtod(number, NULL);
                        if (v > 0 && v <= 3600)
                            cfg->answer_timeout = v;
                    }
                }
            }
        } else if (scan_value(s, depth + 1)) {
            return -1;
        }
        skip_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            continue;
        }
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return 0;
        }
        return -1;
    }
}

static int scan_value(struct scan *s, int depth)
{
    struct span ignored;
    int escaped;
    if (s->p >= s->end)
        return -1;
    switch (*s->p) {
    case '{':
    case '[':
        return scan_container(s, depth, NULL);
    case '"':
        return scan_string(s, &ignored, &escaped);
    case 't':
        return scan_word(s, "true");
    case 'f':
        return scan_word(s, "false");
    case 'n':
        return scan_word(s, "null");
    default:
        return scan_number(s);
    }
}

/* 0 if `data` is a JSON object this scanner reads whole (ASCII only: anything else is
 * yogurt-full's to read, as are the constants NaN and Infinity Python's json accepts). */
static int read_config(const char *data, size_t len, struct config *cfg)
{
    struct scan s = {data, data + len};
    memset(cfg, 0, sizeof *cfg);
    cfg->answer_timeout = DEFAULT_ANSWER_TIMEOUT;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] >= 0x80 || !data[i])
            return -1;
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{' || scan_container(&s, 0, cfg))
        return -1;
    skip_ws(&s);
    return s.p == s.end ? 0 : -1;
}

/* -- plain I/O -------------------------------------------------------------------------------- */

/* All of `data` to `fd`; to the agent's socket (`sock`) with send(MSG_NOSIGNAL), as an agent that
 * hangs up must not kill us with SIGPIPE. */
static int write_all(int fd, const char *data, size_t len, int sock)
{
    while (len) {
        ssize_t n = sock ? send(fd, data, len, MSG_NOSIGNAL) : write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_exactly(int fd, char *buf, size_t len)
{
    while (len) {
        ssize_t n = read(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1; /* EOF, or EAGAIN: SO_RCVTIMEO ran out */
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* All of stdin; NULL on a read or allocation error. */
static char *read_stdin(size_t *len)
{
    size_t size = 0, room = 1 << 16;
    char *buf = malloc(room);
    while (buf) {
        if (size == room) {
            char *bigger = realloc(buf, room *= 2);
            if (!bigger)
                break;
            buf = bigger;
        }
        ssize_t n = read(0, buf + size, room - size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        if (n == 0) {
            *len = size;
            return buf;
        }
        size += (size_t)n;
    }
    free(buf);
    return NULL;
}

/* `text` as the inside of a JSON string: CNI_COMMAND is whatever the caller put there. */
static void put_json_text(const char *text)
{
    for (const unsigned char *c = (const unsigned char *)text; *c; c++)
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if (*c < 0x20 || *c >= 0x7f)
            printf("\\u%04x", *c);
        else
            putchar(*c);
}

static void put_u32(char *at, uint32_t v)
{
    at[0] = (char)(v >> 24), at[1] = (char)(v >> 16), at[2] = (char)(v >> 8), at[3] = (char)v;
}

static uint32_t get_u32(const char *at)
{
    const unsigned char *u = (const unsigned char *)at;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* -- yogurt-full -------------------------------------------------------------------------------- */

/* The path of yogurt-full: beside this executable (/proc/self/exe, else argv[0]); NULL if unknown. */
static const char *full_plugin_path(char *path, size_t size, const char *argv0)
{
    ssize_t n = readlink("/proc/self/exe", path, size - 1);
    if (n > 0)
        path[n] = 0;
    else if (argv0 && strlen(argv0) < size)
        strcpy(path, argv0);
    else
        return NULL;
    char *slash = strrchr(path, '/');
    if (!slash || (size_t)(slash + 1 - path) + sizeof FULL_PLUGIN > size)
        return NULL;
    strcpy(slash + 1, FULL_PLUGIN);
    return path;
}

/* Exec yogurt-full with `config` as its stdin (NULL: stdin untouched, not read); on failure a
 * CNI error (code 999) for a verb, and a line on stderr. */
static int exec_full(char **argv, const char *config, size_t len, int no_agent, const char *version)
{
    char buf[PATH_MAX];
    const char *path = full_plugin_path(buf, sizeof buf, argv[0]);
    const char *why = "cannot find its own directory";
    if (path) {
        why = "cannot pass its stdin on";
        int fd = config ? memfd_create("cni-config", 0) : -1;
        int ready = !config || (fd >= 0 && write_all(fd, config, len, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0 &&
                                dup2(fd, 0) == 0 && close(fd) == 0);
        if (ready) {
            if (no_agent)
                setenv("YOGURT_NO_AGENT", "1", 1);
            argv[0] = (char *)path;
            execv(path, argv);
            why = strerror(errno);
        }
    }
    fprintf(stderr, "cni-yogurt: the front end cannot run %s: %s\n", path ? path : FULL_PLUGIN, why);
    if (getenv("CNI_COMMAND"))
        printf("{\"cniVersion\": \"%s\", \"code\": 999, \"msg\": \"cni-yogurt cannot run " FULL_PLUGIN "\"}\n",
               version ? version : "1.1.0");
    return 127;
}

/* -- the agent ---------------------------------------------------------------------------------- */

enum outcome { ABSENT, NOT_MINE, NO_ANSWER, ANSWERED };

struct answer {
    char *payload;
    uint32_t size;
};

static void set_timeout(int fd, int which, double seconds)
{
    struct timeval tv = {(time_t)seconds, (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6)};
    setsockopt(fd, SOL_SOCKET, which, &tv, sizeof tv);
}

/* protocol.encode_request: 'V' + env length + env (KEY=VALUE, NUL-separated) + stdin, framed. */
static char *encode_request(const char *config, size_t config_len, size_t *len)
{
    size_t env_len = 0, count = 0;
    for (char **e = environ; *e; e++)
        if (**e != '=' && strchr(*e, '='))
            env_len += strlen(*e) + (count++ ? 1 : 0);
    size_t payload = 1 + 4 + env_len + config_len;
    if (payload > MAX_REQUEST)
        return NULL;
    char *buf = malloc(4 + payload), *at = buf + 9;
    if (!buf)
        return NULL;
    put_u32(buf, (uint32_t)payload);
    buf[4] = 'V';
    put_u32(buf + 5, (uint32_t)env_len);
    count = 0;
    for (char **e = environ; *e; e++) {
        if (**e == '=' || !strchr(*e, '='))
            continue;
        if (count++)
            *at++ = 0;
        size_t n = strlen(*e);
        memcpy(at, *e, n);
        at += n;
    }
    memcpy(at, config, config_len);
    *len = 4 + payload;
    return buf;
}

static enum outcome ask(const char *path, const char *request, size_t len, double timeout, struct answer *out)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        return ABSENT; /* no agent can listen there either */
    strcpy(addr.sun_path, path);
    /* Non-blocking for connect, as Python's socket with a timeout is: a unix connect either
     * succeeds at once or fails at once (EAGAIN: the backlog is full, a swamped agent; the verb
     * then runs here, as in frontend.py, where that is an OSError: ABSENT). */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return ABSENT;
    enum outcome result = NO_ANSWER;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) {
        result = ABSENT; /* no agent, a dead one's socket (refused), not ours to reach, or swamped */
        goto done;
    }
    if (fcntl(fd, F_SETFL, 0))
        goto done;
    set_timeout(fd, SO_SNDTIMEO, timeout);
    set_timeout(fd, SO_RCVTIMEO, timeout);
    char head[4];
    if (write_all(fd, request, len, 1) || read_exactly(fd, head, 4))
        goto done;
    uint32_t size = get_u32(head);
    char *payload = size <= MAX_ANSWER ? malloc(size + 1) : NULL;
    if (!payload || read_exactly(fd, payload, size)) {
        free(payload);
        goto done;
    }
    /* protocol.decode_answer */
    if (size >= 1 && payload[0] == 'N') {
        result = NOT_MINE;
    } else if (size >= 9 && payload[0] == 'R' && get_u32(payload + 1) <= 255 &&
               9 + (uint64_t)get_u32(payload + 5) <= size) {
        out->payload = payload;
        out->size = size;
        close(fd);
        return ANSWERED;
    }
    free(payload); /* NOT_MINE, or malformed: as no answer */
done:
    close(fd);
    return result;
}

/* frontend._try_again_json: code 11, naming the socket. */
static int try_again(const char *command, const char *version, const char *path)
{
    printf("{\"cniVersion\": \"%s\", \"code\": 11, \"msg\": \"the node agent at %s did not answer: try "
           "again later\", \"details\": \"no answer to ",
           version, path);
    put_json_text(command);
    printf("; the agent may still complete the call, a retry will see its outcome\"}\n");
    fflush(stdout);
    fprintf(stderr, "cni-yogurt: error 11: the node agent at %s did not answer\n", path);
    return 1;
}

#ifdef FRONTEND_SCAN_ONLY
/* A test build (tests/unit/test_agent_frontend.py): the config scanner alone, on stdin, printing
 * what it read as JSON (null: not read), to be compared with Python's json on the same bytes. */
int main(void)
{
    size_t len = 0;
    char *config = read_stdin(&len);
    struct config cfg;
    if (!config || read_config(config, len, &cfg)) {
        puts("null");
        return 0;
    }
    printf("{\"agentTimeout\": %.17g", cfg.answer_timeout);
    if (cfg.state_dir.at) /* a plain string: no escapes, so printable as it is */
        printf(", \"stateDir\": \"%.*s\"", (int)cfg.state_dir.len, cfg.state_dir.at);
    if (cfg.cni_version.at)
        printf(", \"cniVersion\": \"%.*s\"", (int)cfg.cni_version.len, cfg.cni_version.at);
    puts("}");
    return 0;
}
#else
int main(int argc, char **argv)
{
    (void)argc;
    const char *command = getenv("CNI_COMMAND");
    if (!command || !strcmp(command, "VERSION"))
        return exec_full(argv, NULL, 0, 0, NULL);
    size_t len = 0;
    char *config = read_stdin(&len);
    struct config cfg;
    if (!config) {
        fprintf(stderr, "cni-yogurt: cannot read stdin: %s\n", strerror(errno));
        printf("{\"cniVersion\": \"1.1.0\", \"code\": 999, \"msg\": \"cannot read the network config\"}\n");
        return 1;
    }
    if (read_config(config, len, &cfg))
        return exec_full(argv, config, len, 0, NULL);
    /* frontend.socket_path: stateDir (default /run/cni-yogurt), trailing slashes off, + /agent.sock */
    const char *dir = cfg.state_dir.at ? cfg.state_dir.at : DEFAULT_STATE_DIR;
    size_t dir_len = cfg.state_dir.at ? cfg.state_dir.len : strlen(DEFAULT_STATE_DIR);
    char version[64] = "1.1.0";
    if (cfg.cni_version.at && cfg.cni_version.len < sizeof version)
        snprintf(version, sizeof version, "%.*s", (int)cfg.cni_version.len, cfg.cni_version.at);
    if (!dir_len)
        return exec_full(argv, config, len, 1, version); /* frontend.socket_path: None, run it there */
    while (dir_len > 1 && dir[dir_len - 1] == '/')
        dir_len--;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%.*s%s" SOCKET_NAME, (int)dir_len, dir, dir[dir_len - 1] == '/' ? "" : "/");

    size_t request_len;
    char *request = encode_request(config, len, &request_len);
    struct answer answer = {0};
    enum outcome outcome = request ? ask(path, request, request_len, cfg.answer_timeout, &answer) : ABSENT;
    free(request);
    if (outcome == ANSWERED) {
        uint32_t out_len = get_u32(answer.payload + 5);
        fflush(stdout);
        write_all(1, answer.payload + 9, out_len, 0);
        write_all(2, answer.payload + 9 + out_len, answer.size - 9 - out_len, 0);
        return (int)get_u32(answer.payload + 1);
    }
    if (outcome == NO_ANSWER && strcmp(command, "DEL"))
        return try_again(command, version, path);
    return exec_full(argv, config, len, 1, version);
}
#endif
