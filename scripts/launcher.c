/*
 * The front of the one-file `ollama` executable (build.spec explains the design).
 *
 * Layout of the file: [this program][gzip'd ustar of a PyInstaller one-folder build][trailer]
 * where the 96-byte trailer is key[64] (NUL-padded), payload offset and size (little-endian u64)
 * and the magic "OLLAMA-APPLIANCE".
 *
 * Start-up: exec $XDG_CACHE_HOME/ollama-appliance/runtime/<key>/ollama (default ~/.cache) when it
 * exists; else extract it there under an exclusive lock (temp folder + rename, CRC-checked by
 * zlib), prune versions no process uses, and exec it.  The exec'd app inherits a shared lock on
 * <key>.lock for its lifetime.  When the cache cannot be written, extract into a fresh
 * $TMPDIR/ollama-XXXXXX, run the app as a child and remove the folder afterwards.
 *
 * Built by build.spec: cc -O2 -s launcher.c -Wl,-Bstatic -lz -Wl,-Bdynamic (only glibc at run time).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define MAGIC "OLLAMA-APPLIANCE"
#define TRAILER_SIZE 96
#define PRUNE_MIN_AGE_S 600 /* never prune a folder extracted in the last minutes */

enum { EXTRACT_OK = 0, EXTRACT_IO = -1, EXTRACT_DAMAGED = -2 };

struct payload {
    int fd;
    uint64_t offset, size;
    char key[65];
};

static void warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("ollama: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static uint64_t le64(const unsigned char *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | b[i];
    return v;
}

/* Our own file: /proc/self/exe, or argv[0] (searched in PATH) where /proc is not mounted. */
static int open_self(const char *argv0) {
    int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (fd >= 0 || !argv0) return fd;
    if (strchr(argv0, '/')) return open(argv0, O_RDONLY | O_CLOEXEC);
    const char *path = getenv("PATH");
    char buf[PATH_MAX];
    while (path && *path) {
        const char *end = strchr(path, ':');
        size_t len = end ? (size_t)(end - path) : strlen(path);
        if (snprintf(buf, sizeof buf, "%.*s/%s", (int)len, path, argv0) < (int)sizeof buf &&
            access(buf, X_OK) == 0)
            return open(buf, O_RDONLY | O_CLOEXEC);
        path = end ? end + 1 : NULL;
    }
    return -1;
}

static int read_trailer(struct payload *p, const char *argv0) {
    unsigned char t[TRAILER_SIZE];
    struct stat st;
    p->fd = open_self(argv0);
    if (p->fd < 0 || fstat(p->fd, &st) != 0 || st.st_size < TRAILER_SIZE) return -1;
    if (pread(p->fd, t, TRAILER_SIZE, st.st_size - TRAILER_SIZE) != TRAILER_SIZE) return -1;
    if (memcmp(t + 80, MAGIC, 16) != 0) return -1;
    memcpy(p->key, t, 64);
    p->key[64] = '\0';
    p->offset = le64(t + 64);
    p->size = le64(t + 72);
    if (p->key[0] == '\0' || p->offset + p->size + TRAILER_SIZE != (uint64_t)st.st_size) return -1;
    for (const char *c = p->key; *c; c++)
        if (!(('a' <= *c && *c <= 'z') || ('A' <= *c && *c <= 'Z') || ('0' <= *c && *c <= '9') ||
              *c == '.' || *c == '-' || *c == '_'))
            return -1;
    return 0;
}

static int mkdir_p(const char *path, mode_t mode) {
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return errno = ENAMETOOLONG, -1;
    for (char *c = buf + 1; *c; c++) {
        if (*c != '/') continue;
        *c = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST) return -1;
        *c = '/';
    }
    return (mkdir(buf, mode) != 0 && errno != EEXIST) ? -1 : 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void rm_rf(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static unsigned long long octal(const char *field, size_t len) {
    unsigned long long v = 0;
    for (size_t i = 0; i < len && field[i] >= '0' && field[i] <= '7'; i++) v = v * 8 + (unsigned)(field[i] - '0');
    return v;
}

static int safe_name(const char *name) {
    if (name[0] == '\0' || name[0] == '/') return 0;
    for (const char *c = name; *c;) {
        const char *end = strchrnul(c, '/');
        if (end - c == 2 && c[0] == '.' && c[1] == '.') return 0;
        c = *end ? end + 1 : end;
    }
    return 1;
}

static int header_ok(const unsigned char *h) {
    unsigned long sum = 0;
    for (int i = 0; i < 512; i++) sum += (i >= 148 && i < 156) ? ' ' : h[i];
    return sum == octal((const char *)h + 148, 8) && memcmp(h + 257, "ustar", 5) == 0;
}

static int write_file(gzFile gz, const char *path, mode_t mode, unsigned long long size) {
    static char buf[1 << 17];
    int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (out < 0) return EXTRACT_IO;
    unsigned long long left = size;
    while (left > 0) {
        unsigned want = left < sizeof buf ? (unsigned)left : sizeof buf;
        int n = gzread(gz, buf, want);
        if (n <= 0) return close(out), EXTRACT_DAMAGED;
        for (int done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0) {
                if (errno == EINTR) continue;
                int saved = errno;
                return close(out), errno = saved, EXTRACT_IO;
            }
            done += (int)w;
        }
        left -= (unsigned long long)n;
    }
    if (close(out) != 0) return EXTRACT_IO;
    unsigned pad = (unsigned)((512 - size % 512) % 512);
    return (pad && gzread(gz, buf, pad) != (int)pad) ? EXTRACT_DAMAGED : EXTRACT_OK;
}

/* Extract the payload into dest (created); gzip's CRC-32 and length are checked at the end. */
static int extract(const struct payload *p, const char *dest) {
    if (mkdir(dest, 0755) != 0 && errno != EEXIST) return EXTRACT_IO;
    int fd = dup(p->fd);
    if (fd < 0 || lseek(fd, (off_t)p->offset, SEEK_SET) < 0) return EXTRACT_IO;
    gzFile gz = gzdopen(fd, "rb");
    if (!gz) return close(fd), EXTRACT_IO;
    gzbuffer(gz, 1 << 17);
    unsigned char h[512];
    char name[256 + 1], link[101], path[PATH_MAX];
    int rc = EXTRACT_OK;
    for (;;) {
        if (gzread(gz, h, 512) != 512) { rc = EXTRACT_DAMAGED; break; }
        int zero = 1;
        for (int i = 0; i < 512 && zero; i++) zero = h[i] == 0;
        if (zero) { /* end of archive: read on to the gzip trailer so zlib checks CRC and length */
            char rest[4096];
            int n;
            while ((n = gzread(gz, rest, sizeof rest)) > 0) {}
            int err;
            gzerror(gz, &err);
            if (n < 0 || err != Z_OK) rc = EXTRACT_DAMAGED;
            break;
        }
        if (!header_ok(h)) { rc = EXTRACT_DAMAGED; break; }
        if (h[345]) snprintf(name, sizeof name, "%.155s/%.100s", (const char *)h + 345, (const char *)h);
        else snprintf(name, sizeof name, "%.100s", (const char *)h);
        snprintf(link, sizeof link, "%.100s", (const char *)h + 157);
        unsigned long long size = octal((const char *)h + 124, 12);
        mode_t mode = (mode_t)octal((const char *)h + 100, 8) & 0777;
        char type = (char)h[156];
        if (!safe_name(name) || snprintf(path, sizeof path, "%s/%s", dest, name) >= (int)sizeof path) {
            rc = EXTRACT_DAMAGED;
            break;
        }
        if (type == '5') rc = mkdir_p(path, 0755) == 0 ? EXTRACT_OK : EXTRACT_IO;
        else if (type == '2') rc = symlink(link, path) == 0 ? EXTRACT_OK : EXTRACT_IO;
        else if (type == '0' || type == '\0') rc = write_file(gz, path, mode | 0400, size);
        else rc = EXTRACT_DAMAGED;
        if (rc != EXTRACT_OK) break;
    }
    int saved = errno;
    gzclose(gz);
    errno = saved;
    return rc;
}

static void exec_app(const char *exe, char **argv) {
    argv[0] = (char *)exe;
    execv(exe, argv);
}

static int cache_base(char *out, size_t n) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int len;
    if (xdg && xdg[0] == '/') len = snprintf(out, n, "%s/ollama-appliance/runtime", xdg);
    else if (home && home[0] == '/') len = snprintf(out, n, "%s/.cache/ollama-appliance/runtime", home);
    else return -1;
    return len < (int)n ? 0 : -1;
}

static int has_prefix(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* Remove this key's leftovers of interrupted runs (the caller holds the key's exclusive lock). */
static void clean_leftovers(const char *base, const char *key) {
    char prefix[128], path[PATH_MAX];
    DIR *d = opendir(base);
    struct dirent *e;
    snprintf(prefix, sizeof prefix, ".%s.", key);
    while (d && (e = readdir(d))) {
        if (has_prefix(e->d_name, prefix) && snprintf(path, sizeof path, "%s/%s", base, e->d_name) < (int)sizeof path)
            rm_rf(path);
    }
    if (d) closedir(d);
}

/* Remove other versions' folders that no process holds a lock on (an upgrade leaves one behind). */
static void prune_others(const char *base, const char *key) {
    char path[PATH_MAX], lock[PATH_MAX], trash[PATH_MAX];
    DIR *d = opendir(base);
    struct dirent *e;
    struct stat st;
    while (d && (e = readdir(d))) {
        const char *name = e->d_name;
        size_t len = strlen(name);
        if (name[0] == '.' || strcmp(name, key) == 0 || (len > 5 && strcmp(name + len - 5, ".lock") == 0)) continue;
        if (snprintf(path, sizeof path, "%s/%s", base, name) >= (int)sizeof path ||
            snprintf(lock, sizeof lock, "%s.lock", path) >= (int)sizeof lock ||
            snprintf(trash, sizeof trash, "%s/.%s.trash-%d", base, name, (int)getpid()) >= (int)sizeof trash)
            continue;
        if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode) || time(NULL) - st.st_mtime < PRUNE_MIN_AGE_S) continue;
        int lfd = open(lock, O_RDWR | O_CLOEXEC);
        if (lfd < 0) continue; /* not ours */
        if (flock(lfd, LOCK_EX | LOCK_NB) == 0 && rename(path, trash) == 0) {
            rm_rf(trash);
            unlink(lock);
        }
        close(lfd);
    }
    if (d) closedir(d);
}

/* Extract into the per-user cache and exec from there; returns only if the cache cannot be used. */
static void run_cached(const struct payload *p, char **argv) {
    char base[PATH_MAX], dir[PATH_MAX], exe[PATH_MAX], lock[PATH_MAX], tmp[PATH_MAX];
    if (cache_base(base, sizeof base) != 0) return;
    if (snprintf(dir, sizeof dir, "%s/%s", base, p->key) >= (int)sizeof dir ||
        snprintf(exe, sizeof exe, "%s/ollama", dir) >= (int)sizeof exe ||
        snprintf(lock, sizeof lock, "%s.lock", dir) >= (int)sizeof lock ||
        snprintf(tmp, sizeof tmp, "%s/.%s.tmp-%d", base, p->key, (int)getpid()) >= (int)sizeof tmp)
        return;
    /* Fast path. Not O_CLOEXEC: the app keeps this shared lock, so no pruner removes its folder. */
    int lfd = open(lock, O_RDONLY);
    if (lfd >= 0) {
        if (flock(lfd, LOCK_SH) == 0 && access(exe, X_OK) == 0) exec_app(exe, argv);
        close(lfd);
    }
    if (mkdir_p(base, 0755) != 0 || (lfd = open(lock, O_RDWR | O_CREAT, 0644)) < 0) return;
    if (flock(lfd, LOCK_EX) != 0) return (void)close(lfd);
    /* F_OK, not X_OK: on a noexec HOME the exec below fails and we fall back without re-extracting. */
    if (access(exe, F_OK) != 0) { /* nobody extracted it while we waited for the lock */
        clean_leftovers(base, p->key);
        if (access(dir, F_OK) == 0) { /* a damaged folder: move it aside */
            char old[PATH_MAX];
            if (snprintf(old, sizeof old, "%s/.%s.old-%d", base, p->key, (int)getpid()) < (int)sizeof old &&
                rename(dir, old) == 0)
                rm_rf(old);
        }
        int rc = extract(p, tmp);
        if (rc == EXTRACT_OK) { /* the folder's name promises complete files, even after a crash */
            int dfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd < 0 || syncfs(dfd) != 0) rc = EXTRACT_IO;
            if (dfd >= 0) close(dfd);
        }
        if (rc == EXTRACT_DAMAGED) {
            rm_rf(tmp);
            warn("this executable is damaged (its payload fails the checksum); download it again");
            exit(127);
        }
        if (rc != EXTRACT_OK || rename(tmp, dir) != 0) {
            warn("cannot unpack into %s (%s); using a temporary folder", base, strerror(errno));
            rm_rf(tmp);
            flock(lfd, LOCK_UN);
            close(lfd);
            return;
        }
        prune_others(base, p->key);
    }
    flock(lfd, LOCK_SH);
    exec_app(exe, argv);
    close(lfd);
}

static volatile pid_t child_pid;

static void forward(int sig) {
    if (child_pid > 0) kill(child_pid, sig);
}

/* No usable cache: run from a temporary folder, removed when the app exits. */
static int run_temporary(const struct payload *p, char **argv) {
    const char *tmpdir = getenv("TMPDIR");
    char dir[PATH_MAX], exe[PATH_MAX];
    if (!tmpdir || tmpdir[0] != '/' || strlen(tmpdir) > PATH_MAX / 2) tmpdir = "/tmp";
    snprintf(dir, sizeof dir, "%s/ollama-XXXXXX", tmpdir);
    if (!mkdtemp(dir)) return warn("cannot create a folder in %s: %s", tmpdir, strerror(errno)), 127;
    int rc = extract(p, dir);
    if (rc != EXTRACT_OK) {
        rm_rf(dir);
        if (rc == EXTRACT_DAMAGED) warn("this executable is damaged (its payload fails the checksum)");
        else warn("cannot unpack into %s: %s", dir, strerror(errno));
        return 127;
    }
    if (snprintf(exe, sizeof exe, "%s/ollama", dir) >= (int)sizeof exe) return rm_rf(dir), 127;
    /* Terminal signals reach the child through its process group; forward the ones sent to us. */
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    int forwarded[] = {SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++) signal(forwarded[i], forward);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGINT, SIG_DFL);
        signal(SIGQUIT, SIG_DFL);
        exec_app(exe, argv);
        _exit(127);
    }
    child_pid = pid;
    int status = 0;
    while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    rm_rf(dir);
    if (pid < 0) return warn("cannot start %s: %s", exe, strerror(errno)), 127;
    if (WIFSIGNALED(status)) {
        signal(WTERMSIG(status), SIG_DFL);
        kill(getpid(), WTERMSIG(status));
        return 128 + WTERMSIG(status);
    }
    return WEXITSTATUS(status);
}

int main(int argc, char **argv) {
    (void)argc;
    struct payload p;
    if (read_trailer(&p, argv[0]) != 0) {
        warn("cannot read the application inside this executable (truncated download?)");
        return 127;
    }
    run_cached(&p, argv);
    return run_temporary(&p, argv);
}
