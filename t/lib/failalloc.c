/*
 * failalloc.so: an LD_PRELOAD allocation-failure injector for nginx
 * workers (t/068-alloc-failures.t).
 *
 * malloc, calloc, realloc, posix_memalign, memalign and aligned_alloc
 * are wrapped (glibc's own __libc_* underneath: no dlsym, which may
 * allocate).  Nothing fails until the file named by FAILALLOC_CTL (read
 * when the library loads, so the nginx that starts with LD_PRELOAD set
 * keeps it in every process it forks) holds a line of settings:
 *
 *   ppid=<pid>     only processes whose parent is <pid> (the master:
 *                  its workers; never the master itself); required
 *   mode=lib       (default) only allocations made by the module, by
 *                  hiredis, jansson or pcre2 (the first caller outside
 *                  libc and this library), or by nginx's allocators
 *                  (ngx_alloc, ngx_palloc...: at most 3 nginx frames)
 *                  called by the module: the module's own doing
 *   mode=all       every allocation
 *   from=<word>    with mode=lib: only those whose first caller is in
 *                  the object whose file name holds <word> (hiredis:
 *                  its own calls to malloc(), not the module's
 *                  hi_malloc())
 *   rate=<n>       each candidate fails with probability n / 1000000
 *   every=<n>      or every n-th candidate fails
 *   burst=<n>      a failure fails the n - 1 candidates after it too
 *                  (memory stays short for a while, as it does)
 *   seed=<n>       of the generator (xorshift64*), mixed with the
 *                  process' arming count (not its pid): a run is as
 *                  repeatable as the traffic's timing lets it be
 *   under=<name>   instead of mode: only allocations made under the
 *                  function <name> (a dynamic symbol: an exported
 *                  function of nginx or the module, found in the
 *                  stack: not one left by a tail call), e.g. a
 *                  worker's start and not its requests
 *   fresh=1        only processes that found the file armed when they
 *                  first looked (workers started after arming: a
 *                  reload's), not those already running
 *   trace=1        each failure's stack to <ctl>.trace.<pid>
 *   short=<n>      also, once per arming, the first write() to a socket
 *                  of more than n bytes writes n only (a socket found
 *                  full part way: the writer must come back for the
 *                  rest); with under=, only one made under it, else any
 *                  (mode= and from= do not apply); it arms nothing by
 *                  itself (rate= or every= does)
 *
 * The file is read again at most every 10 ms (a coarse monotonic clock,
 * no system call in between): removing or emptying it disarms every
 * process within that time.  While armed, a process writes
 * "calls <candidates> failed <failures>" to <ctl>.stats.<pid> (written
 * aside and renamed: never found empty), so the test can tell that
 * failures were injected, and " short 1" once a write was cut.
 *
 * Build: cc -shared -fPIC -O2 -o failalloc.so failalloc.c
 */

#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <execinfo.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>


extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);


#define FA_RANGES     32
#define FA_DEPTH      24
#define FA_PATH_MAX   512

enum { FA_OTHER = 0, FA_SKIP, FA_TARGET, FA_MODULE, FA_NGINX };

typedef struct {
    uintptr_t    lo, hi;
    int          kind;
    const char  *name;
} fa_range_t;


static __thread int  fa_in_hook;

static char          fa_ctl[FA_PATH_MAX];
static size_t        fa_ctl_len;

/* settings, as last read */
static int           fa_armed;
static int           fa_mode_all;
static long          fa_ppid;
static uint64_t      fa_rate;       /* per million */
static uint64_t      fa_every;
static uint64_t      fa_burst;
static uint64_t      fa_seed;
static uint64_t      fa_short;      /* short=: bytes */
static int           fa_trace;
static int           fa_fresh;
static char          fa_under[64];
static char          fa_from[64];

/* this process */
static pid_t         fa_pid;        /* whose state this is */
static int           fa_is_target;  /* its parent is ppid */
static int           fa_first;      /* the file not read yet */
static int           fa_born_armed; /* armed when first read */
static uint64_t      fa_rng;
static uint64_t      fa_calls, fa_failed, fa_reported, fa_burst_left;
static uint64_t      fa_shorts, fa_shorts_reported;
static uint64_t      fa_arms;
static int           fa_trace_fd = -1;
static struct timespec  fa_next_read;

static fa_range_t    fa_ranges[FA_RANGES];
static int           fa_nranges;
static pid_t         fa_ranges_pid;

/* the function of under=, as this process found it */
static char          fa_fn_name[64];
static uintptr_t     fa_fn_lo, fa_fn_hi;
static pid_t         fa_fn_pid;


static void fa_read_ctl(void);


static int
fa_contains(const char *s, const char *what)
{
    return s != NULL && strstr(s, what) != NULL;
}


static int
fa_phdr(struct dl_phdr_info *info, size_t size, void *data)
{
    int          kind, i;
    uintptr_t    lo, hi, a;
    const char  *name;

    (void) size;
    (void) data;

    name = info->dlpi_name;

    if (name == NULL || name[0] == '\0') {
        /* the first one is the program; the vDSO has a name */
        kind = FA_NGINX;

    } else if (fa_contains(name, "ngx_http_rules_module")) {
        kind = FA_MODULE;

    } else if (fa_contains(name, "libhiredis")
               || fa_contains(name, "libjansson")
               || fa_contains(name, "libpcre2-8"))
    {
        kind = FA_TARGET;

    } else if (fa_contains(name, "/libc.so") || fa_contains(name, "failalloc")
               || fa_contains(name, "libgcc_s"))
    {
        kind = FA_SKIP;

    } else {
        return 0;
    }

    lo = UINTPTR_MAX;
    hi = 0;

    for (i = 0; i < info->dlpi_phnum; i++) {
        if (info->dlpi_phdr[i].p_type != PT_LOAD) {
            continue;
        }

        a = info->dlpi_addr + info->dlpi_phdr[i].p_vaddr;

        if (a < lo) {
            lo = a;
        }

        if (a + info->dlpi_phdr[i].p_memsz > hi) {
            hi = a + info->dlpi_phdr[i].p_memsz;
        }
    }

    if (lo < hi && fa_nranges < FA_RANGES) {
        fa_ranges[fa_nranges].lo = lo;
        fa_ranges[fa_nranges].hi = hi;
        fa_ranges[fa_nranges].kind = kind;
        fa_ranges[fa_nranges].name = name;
        fa_nranges++;
    }

    return 0;
}


static int
fa_kind(void *addr, const char **name)
{
    int        i;
    uintptr_t  a = (uintptr_t) addr;

    *name = NULL;

    for (i = 0; i < fa_nranges; i++) {
        if (a >= fa_ranges[i].lo && a < fa_ranges[i].hi) {
            *name = fa_ranges[i].name;
            return fa_ranges[i].kind;
        }
    }

    return FA_OTHER;
}


/* mode=lib: an allocation on behalf of the module and its libraries */
static int
fa_ours(void)
{
    int          n, i, kind, nginx;
    void        *frames[FA_DEPTH];
    const char  *name;

    if (fa_ranges_pid != fa_pid) {
        /* the module is loaded before any worker exists */
        fa_nranges = 0;
        dl_iterate_phdr(fa_phdr, NULL);
        fa_ranges_pid = fa_pid;
    }

    n = backtrace(frames, FA_DEPTH);
    nginx = 0;

    for (i = 1; i < n; i++) {
        kind = fa_kind(frames[i], &name);

        if (kind == FA_SKIP) {
            continue;
        }

        if (fa_from[0]) {
            return (kind == FA_TARGET || kind == FA_MODULE)
                   && fa_contains(name, fa_from);
        }

        if (kind == FA_TARGET || kind == FA_MODULE) {
            return 1;
        }

        if (kind == FA_NGINX && ++nginx <= 3) {
            continue;
        }

        return 0;
    }

    return 0;
}


/* under=<name>: a caller's frame inside that function */
static int
fa_under_fn(void)
{
    int         n, i;
    void       *frames[FA_DEPTH], *addr;
    Dl_info     info;
    ElfW(Sym)  *sym;

    if (fa_fn_pid != fa_pid || strcmp(fa_fn_name, fa_under) != 0) {
        memcpy(fa_fn_name, fa_under, sizeof(fa_fn_name));
        fa_fn_pid = fa_pid;
        fa_fn_lo = fa_fn_hi = 0;

        addr = dlsym(RTLD_DEFAULT, fa_under);
        sym = NULL;

        if (addr && dladdr1(addr, &info, (void **) &sym, RTLD_DL_SYMENT)
            && sym)
        {
            fa_fn_lo = (uintptr_t) addr;
            fa_fn_hi = fa_fn_lo + sym->st_size;
        }
    }

    n = backtrace(frames, FA_DEPTH);

    for (i = 1; i < n; i++) {
        if ((uintptr_t) frames[i] > fa_fn_lo
            && (uintptr_t) frames[i] <= fa_fn_hi)
        {
            return 1;
        }
    }

    return 0;
}


static uint64_t
fa_random(void)
{
    fa_rng ^= fa_rng >> 12;
    fa_rng ^= fa_rng << 25;
    fa_rng ^= fa_rng >> 27;

    return fa_rng * 0x2545F4914F6CDD1DULL;
}


static char *
fa_utoa(char *p, uint64_t v)
{
    char    digits[24];
    size_t  n = 0;

    do {
        digits[n++] = (char) ('0' + v % 10);
        v /= 10;
    } while (v);

    while (n) {
        *p++ = digits[--n];
    }

    return p;
}


#define FA_SIDE_MAX  (FA_PATH_MAX + 64)


/* <ctl><suffix><pid> */
static char *
fa_side_path(const char *suffix, char *path)
{
    char    *p;
    size_t   len;

    len = strlen(suffix);
    p = memcpy(path, fa_ctl, fa_ctl_len);
    p += fa_ctl_len;
    memcpy(p, suffix, len);
    p = fa_utoa(p + len, (uint64_t) fa_pid);
    *p = '\0';

    return path;
}


static int
fa_open_side(const char *suffix, int flags)
{
    char  path[FA_SIDE_MAX];

    return open(fa_side_path(suffix, path), flags | O_CLOEXEC, 0644);
}


static void
fa_report(void)
{
    int    fd;
    char   buf[128], *p, from[FA_SIDE_MAX], to[FA_SIDE_MAX];

    if (fa_calls == fa_reported && fa_calls
        && fa_shorts == fa_shorts_reported)
    {
        return;
    }

    fa_reported = fa_calls;
    fa_shorts_reported = fa_shorts;

    fd = open(fa_side_path(".stats-new.", from),
              O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return;
    }

    p = memcpy(buf, "calls ", 6);
    p = fa_utoa(p + 6, fa_calls);
    p = memcpy(p, " failed ", 8);
    p = fa_utoa(p + 8, fa_failed);

    if (fa_shorts) {
        p = memcpy(p, " short ", 7);
        p = fa_utoa(p + 7, fa_shorts);
    }

    *p++ = '\n';

    (void) !write(fd, buf, p - buf);
    close(fd);

    (void) rename(from, fa_side_path(".stats.", to));
}


static uint64_t
fa_number(const char *s, const char *name)
{
    uint64_t     v;
    const char  *p;
    size_t       len;

    len = strlen(name);

    for (p = s; (p = strstr(p, name)) != NULL; p += len) {
        if ((p == s || p[-1] == ' ' || p[-1] == '\t' || p[-1] == '\n')
            && p[len] == '=')
        {
            v = 0;

            for (p += len + 1; *p >= '0' && *p <= '9'; p++) {
                v = v * 10 + (uint64_t) (*p - '0');
            }

            return v;
        }
    }

    return 0;
}


/* the value of name=<word> in s, or "" */
static void
fa_word(const char *s, const char *name, char *out, size_t size)
{
    size_t       len, n;
    const char  *p;

    len = strlen(name);
    out[0] = '\0';

    for (p = s; (p = strstr(p, name)) != NULL; p += len) {
        if ((p == s || p[-1] == ' ' || p[-1] == '\t' || p[-1] == '\n')
            && p[len] == '=')
        {
            p += len + 1;

            for (n = 0; n < size - 1 && p[n] && p[n] != ' ' && p[n] != '\t'
                        && p[n] != '\n'; n++)
            {
                out[n] = p[n];
            }

            out[n] = '\0';
            return;
        }
    }
}


static void
fa_read_ctl(void)
{
    int       fd, was;
    char      buf[512];
    ssize_t   n;

    was = fa_armed && fa_is_target;

    fd = open(fa_ctl, O_RDONLY | O_CLOEXEC);
    n = 0;

    if (fd >= 0) {
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
    }

    if (n <= 0) {
        fa_armed = 0;

    } else {
        buf[n] = '\0';
        fa_ppid = (long) fa_number(buf, "ppid");
        fa_rate = fa_number(buf, "rate");
        fa_every = fa_number(buf, "every");
        fa_burst = fa_number(buf, "burst");
        fa_seed = fa_number(buf, "seed");
        fa_short = fa_number(buf, "short");
        fa_trace = (int) fa_number(buf, "trace");
        fa_fresh = (int) fa_number(buf, "fresh");
        fa_word(buf, "under", fa_under, sizeof(fa_under));
        fa_word(buf, "from", fa_from, sizeof(fa_from));
        fa_mode_all = strstr(buf, "mode=all") != NULL;
        fa_armed = fa_ppid > 0 && (fa_rate || fa_every);
    }

    if (fa_first) {
        fa_first = 0;
        fa_born_armed = fa_armed;
    }

    fa_is_target = fa_armed && (long) getppid() == fa_ppid
                   && (!fa_fresh || fa_born_armed);

    if (fa_armed && fa_is_target && !was) {
        /* armed again: a new sequence, the same for the same seed */
        fa_arms++;
        fa_rng = (fa_seed ^ (fa_arms * 0x9E3779B97F4A7C15ULL)) | 1;
        fa_burst_left = 0;
        fa_shorts = 0;
    }

    if (fa_is_target || was) {
        fa_report();
    }

    if (fa_trace && fa_is_target && fa_trace_fd < 0) {
        fa_trace_fd = fa_open_side(".trace.",
                                   O_WRONLY | O_CREAT | O_APPEND);
    }
}


/* this process' state, and the settings read again every 10 ms */
static void
fa_update(void)
{
    pid_t            pid;
    struct timespec  now;

    pid = getpid();

    if (pid != fa_pid) {
        /* a new process (fork): its own state */
        fa_pid = pid;
        fa_is_target = 0;
        fa_armed = 0;
        fa_first = 1;
        fa_calls = fa_failed = fa_reported = 0;
        fa_shorts = fa_shorts_reported = 0;
        fa_trace_fd = -1;
        fa_next_read.tv_sec = 0;
    }

    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);

    if (now.tv_sec > fa_next_read.tv_sec
        || (now.tv_sec == fa_next_read.tv_sec
            && now.tv_nsec >= fa_next_read.tv_nsec))
    {
        fa_read_ctl();

        fa_next_read = now;
        fa_next_read.tv_nsec += 10 * 1000 * 1000;

        if (fa_next_read.tv_nsec >= 1000 * 1000 * 1000) {
            fa_next_read.tv_nsec -= 1000 * 1000 * 1000;
            fa_next_read.tv_sec++;
        }
    }
}


/* 1: this allocation fails */
static int
fa_fail(void)
{
    int  fail;

    if (fa_ctl_len == 0 || fa_in_hook) {
        return 0;
    }

    fa_in_hook = 1;

    fa_update();

    fail = 0;

    if (fa_armed && fa_is_target
        && (fa_under[0] ? fa_under_fn() : fa_mode_all || fa_ours()))
    {
        fa_calls++;

        if (fa_burst_left) {
            fa_burst_left--;
            fail = 1;

        } else {
            fail = fa_every ? (fa_calls % fa_every) == 0
                            : fa_random() % 1000000 < fa_rate;

            if (fail && fa_burst > 1) {
                fa_burst_left = fa_burst - 1;
            }
        }
    }

    if (fail) {
        fa_failed++;

        if (fa_trace_fd >= 0) {
            void  *frames[FA_DEPTH];
            int    n;

            n = backtrace(frames, FA_DEPTH);
            (void) !write(fa_trace_fd, "--\n", 3);
            backtrace_symbols_fd(frames, n, fa_trace_fd);
        }
    }

    fa_in_hook = 0;

    return fail;
}


__attribute__((constructor))
static void
fa_init(void)
{
    void        *frames[2];
    const char  *ctl;

    ctl = getenv("FAILALLOC_CTL");

    if (ctl == NULL || ctl[0] == '\0' || strlen(ctl) >= FA_PATH_MAX) {
        return;
    }

    /* the unwinder (libgcc_s) is loaded now, not inside a malloc */
    fa_in_hook = 1;
    (void) backtrace(frames, 2);
    fa_in_hook = 0;

    fa_ctl_len = strlen(ctl);
    memcpy(fa_ctl, ctl, fa_ctl_len + 1);
}


void *
malloc(size_t size)
{
    if (fa_fail()) {
        errno = ENOMEM;
        return NULL;
    }

    return __libc_malloc(size);
}


void *
calloc(size_t n, size_t size)
{
    if (fa_fail()) {
        errno = ENOMEM;
        return NULL;
    }

    return __libc_calloc(n, size);
}


void *
realloc(void *p, size_t size)
{
    if (size && fa_fail()) {
        errno = ENOMEM;
        return NULL;
    }

    return __libc_realloc(p, size);
}


void *
memalign(size_t alignment, size_t size)
{
    if (fa_fail()) {
        errno = ENOMEM;
        return NULL;
    }

    return __libc_memalign(alignment, size);
}


void *
aligned_alloc(size_t alignment, size_t size)
{
    if (fa_fail()) {
        errno = ENOMEM;
        return NULL;
    }

    return __libc_memalign(alignment, size);
}


int
posix_memalign(void **out, size_t alignment, size_t size)
{
    void  *p;

    if (alignment % sizeof(void *) != 0
        || (alignment & (alignment - 1)) != 0 || alignment == 0)
    {
        return EINVAL;
    }

    if (fa_fail()) {
        return ENOMEM;
    }

    p = __libc_memalign(alignment, size);
    if (p == NULL) {
        return ENOMEM;
    }

    *out = p;

    return 0;
}


/* short=: the bytes this write() may take, n or fewer */
static size_t
fa_write_len(int fd, size_t n)
{
    struct stat  st;

    if (fa_ctl_len == 0 || fa_in_hook) {
        return n;
    }

    fa_in_hook = 1;

    fa_update();

    if (fa_armed && fa_is_target && fa_short && n > fa_short
        && fa_shorts == 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)
        && (!fa_under[0] || fa_under_fn()))
    {
        n = fa_short;
        fa_shorts++;
        fa_report();
    }

    fa_in_hook = 0;

    return n;
}


ssize_t
write(int fd, const void *buf, size_t n)
{
    return syscall(SYS_write, fd, buf, fa_write_len(fd, n));
}
