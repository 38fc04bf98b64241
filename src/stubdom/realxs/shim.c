/*
 * shim.c -- an LD_PRELOAD library under which the real Xen 4.17 xenstored
 * daemons (cxenstored "xenstored" and oxenstored, Debian's xen-utils-4.17)
 * run on a plain Linux machine: no hypervisor, no /dev/xen, no root.
 *
 * The daemons talk to Xen through a handful of library calls.  This library
 * defines those symbols ahead of libxenctrl, libxengnttab and libxenevtchn,
 * and answers them from files in one directory, $XSFAKE_DIR, so that any
 * process can play the hypervisor or a guest.  stubdom.realxs builds it,
 * starts the daemons under it and reads the directory (fakexen.py);
 * docs/realxs.md describes the behaviour for a user.
 *
 * The directory
 *   ring-<domid>      the domain's 4 KiB xenstore ring page (the grant map
 *                     is a MAP_SHARED mmap of this file; created zeroed).
 *                     ring-0 is dom0's page (/proc/xen/xsd_kva).
 *   evtchn            FIFO: the daemon's event-channel device.  Each byte
 *                     written to it is one pending port.  Byte 1 is the
 *                     VIRQ_DOM_EXC port: "re-check every domain's state".
 *   port-<domid>      the local port bound to the domain (decimal).  A guest
 *                     writes this byte to evtchn after changing its ring
 *                     (oxenstored dispatches on it; cxenstored scans all).
 *   notify-<domid>    FIFO: one byte per xenevtchn_notify on the domain's
 *                     port, i.e. the daemon changed the ring (a reply or a
 *                     watch event produced, requests consumed).  A guest
 *                     polls this instead of the ring indexes.
 *   dead-<domid>, shutdown-<domid>, gone-<domid>
 *                     markers a test or host creates: the domain is dying,
 *                     shut down, or does not exist.  Without a marker every
 *                     domid below 0x7FF0 exists and runs.
 *
 * Environment
 *   XSFAKE_DIR        the directory (default ${TMPDIR:-/tmp}/xsfake).
 *   XSFAKE_SOCKET     where oxenstored's compiled-in socket path goes.
 *                     cxenstored needs none: it honours XENSTORED_PATH.
 *   XSFAKE_DOM0_PORT  what /proc/xen/xsd_port reads (default "1").
 *   XSFAKE_TRACE      set: log every faked call to stderr.
 *
 * Only the Xen 4.17 ABI is matched (xc_dominfo_t, xc_domaininfo_t flags);
 * later releases changed these interfaces.  Nothing is isolated: whoever can
 * open $XSFAKE_DIR can act as any domain.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define RING_PAGE 4096
#define VIRQ_PORT 1          /* the port bind_virq hands out: VIRQ_DOM_EXC */
#define FIRST_PORT 10        /* ports bind_interdomain hands out: 10, 11, ... */
#define MAX_PORTS 4096       /* ports we remember a domain for (notify) */
#define DOMID_FIRST_RESERVED 0x7FF0U

/* ---- helpers ------------------------------------------------------------ */

static const char *shim_dir(void)
{
	static char buf[512];
	const char *dir = getenv("XSFAKE_DIR");
	const char *tmp;

	if (dir && *dir)
		return dir;
	tmp = getenv("TMPDIR");
	snprintf(buf, sizeof(buf), "%s/xsfake", (tmp && *tmp) ? tmp : "/tmp");
	return buf;
}

static void trace(const char *fmt, ...)
{
	va_list ap;

	if (!getenv("XSFAKE_TRACE"))
		return;
	va_start(ap, fmt);
	fprintf(stderr, "[realxs shim] ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

/* The next open() in the chain: our own open() below rewrites two paths. */
static int real_open(const char *path, int flags, mode_t mode)
{
	static int (*next)(const char *, int, ...);

	if (!next)
		next = dlsym(RTLD_NEXT, "open");
	return next(path, flags, mode);
}

/* "<dir>/<name>" when domid < 0, else "<dir>/<name>-<domid>" */
static void shim_path(char *buf, size_t len, const char *name, long domid)
{
	if (domid < 0)
		snprintf(buf, len, "%s/%s", shim_dir(), name);
	else
		snprintf(buf, len, "%s/%s-%ld", shim_dir(), name, domid);
}

static int has_marker(const char *state, uint32_t domid)
{
	char path[512];
	struct stat st;

	shim_path(path, sizeof(path), state, domid);
	return stat(path, &st) == 0;
}

/* ring-<domid>, opened read-write and sized to one page */
static int open_ring(uint32_t domid)
{
	char path[512];
	int fd;

	shim_path(path, sizeof(path), "ring", domid);
	fd = real_open(path, O_RDWR | O_CREAT, 0600);
	if (fd >= 0 && ftruncate(fd, RING_PAGE)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* The "grant map" of a domain's ring: the shared mapping of its file. */
static void *map_ring(uint32_t domid)
{
	void *page;
	int fd = open_ring(domid);

	if (fd < 0)
		return NULL;
	page = mmap(NULL, RING_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	trace("map ring of dom %u\n", domid);
	return page == MAP_FAILED ? NULL : page;
}

/* ---- libc: the two /proc/xen files a dom0 daemon opens ------------------ */

/* /proc/xen/xsd_port: a pipe holding dom0's port number */
static int open_xsd_port(void)
{
	const char *port = getenv("XSFAKE_DOM0_PORT");
	int fds[2];

	if (!port || !*port)
		port = "1";
	if (pipe(fds))
		return -1;
	if (write(fds[1], port, strlen(port)) < 0) {
		/* an empty pipe takes a few bytes: cannot fail */
	}
	close(fds[1]);
	return fds[0];
}

int open(const char *path, int flags, ...)
{
	mode_t mode = 0;

	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;

		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	if (!strcmp(path, "/proc/xen/xsd_port")) {
		trace("open(%s) -> pipe\n", path);
		return open_xsd_port();
	}
	if (!strcmp(path, "/proc/xen/xsd_kva")) {
		trace("open(%s) -> ring-0\n", path);
		return open_ring(0);
	}
	return real_open(path, flags, mode);
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

/* ---- libxenctrl: domain info -------------------------------------------- */

/* The leading fields of Xen 4.17's xc_dominfo_t; we fill only these. */
struct dominfo_head {
	uint32_t domid;
	uint32_t ssidref;
	unsigned int dying:1, crashed:1, shutdown:1, paused:1, blocked:1,
		     running:1, hvm:1, debugged:1, xenstore:1, hap:1;
	unsigned int shutdown_reason;
};

void *xc_interface_open(void *logger, void *dombuild_logger, unsigned flags)
{
	return calloc(1, 16);
}

int xc_interface_close(void *xch)
{
	free(xch);
	return 0;
}

static int domain_exists(uint32_t domid)
{
	return domid < DOMID_FIRST_RESERVED && !has_marker("gone", domid);
}

/* cxenstored asks for exactly one domain: fill one entry, or none. */
int xc_domain_getinfo(void *xch, uint32_t first_domid, unsigned int max_doms,
		      void *info)
{
	struct dominfo_head *head = info;

	if (max_doms < 1 || !domain_exists(first_domid))
		return 0;
	memset(head, 0, sizeof(*head));
	head->domid = first_domid;
	head->dying = has_marker("dead", first_domid);
	head->shutdown = has_marker("shutdown", first_domid);
	head->running = !head->dying && !head->shutdown;
	trace("getinfo(%u): dying=%d shutdown=%d\n", first_domid, head->dying,
	      head->shutdown);
	return 1;
}

/*
 * oxenstored's xc_domaininfo_t: domid_t at offset 0, uint32_t flags at 4
 * (XEN_DOMINF_dying 1<<0, _shutdown 1<<2, _running 1<<5).
 */
int xc_domain_getinfolist(void *xch, uint32_t first_domain,
			  unsigned int max_domains, void *info)
{
	unsigned char *entry = info;
	uint32_t flags = 0;

	if (max_domains < 1 || !domain_exists(first_domain))
		return 0;
	memset(entry, 0, 96);	/* less than sizeof(xc_domaininfo_t) */
	*(uint16_t *)entry = (uint16_t)first_domain;
	if (has_marker("dead", first_domain))
		flags |= 1u << 0;
	if (has_marker("shutdown", first_domain))
		flags |= 1u << 2;
	if (!flags)
		flags |= 1u << 5;
	*(uint32_t *)(entry + 4) = flags;
	trace("getinfolist(%u): flags %#x\n", first_domain, flags);
	return 1;
}

/* oxenstored maps a guest's ring through the foreign map, cx through grants */
void *xc_map_foreign_range(void *xch, uint32_t dom, int size, int prot,
			   unsigned long mfn)
{
	return map_ring(dom);
}

/* ---- libxengnttab ------------------------------------------------------- */

void *xengnttab_open(void *logger, unsigned flags) { return calloc(1, 16); }
int xengnttab_close(void *xgt) { free(xgt); return 0; }
int xengnttab_set_max_grants(void *xgt, uint32_t nr) { return 0; }

void *xengnttab_map_grant_ref(void *xgt, uint32_t domid, uint32_t ref, int prot)
{
	return map_ring(domid);
}

int xengnttab_unmap(void *xgt, void *start, uint32_t count)
{
	return munmap(start, (size_t)RING_PAGE * count);
}

/* ---- libxenevtchn ------------------------------------------------------- */

static int evtchn_fd = -1;
static int next_port = FIRST_PORT;

/* What a bound port leads to: its domain and that domain's notify FIFO. */
static struct {
	int bound;
	uint32_t domid;
	int notify_fd;
} ports[MAX_PORTS];

void *xenevtchn_open(void *logger, unsigned flags)
{
	char path[512];

	shim_path(path, sizeof(path), "evtchn", -1);
	if (mkfifo(path, 0600) && errno != EEXIST)
		return NULL;
	/* Read-write: the open does not wait for a writer, and the FIFO never
	 * reads as end-of-file when the last guest closes it. */
	evtchn_fd = real_open(path, O_RDWR | O_NONBLOCK, 0);
	trace("evtchn -> fd %d\n", evtchn_fd);
	return evtchn_fd < 0 ? NULL : calloc(1, 16);
}

void *xenevtchn_fdopen(void *logger, int fd, unsigned flags)
{
	evtchn_fd = fd;
	return calloc(1, 16);
}

int xenevtchn_close(void *xce) { free(xce); return 0; }
int xenevtchn_fd(void *xce) { return evtchn_fd; }
int xenevtchn_bind_virq(void *xce, unsigned int virq) { return VIRQ_PORT; }
int xenevtchn_unmask(void *xce, uint32_t port) { return 0; }

/* notify-<domid>, created if needed and opened read-write and non-blocking:
 * a write neither waits for a reader nor fails for want of one. */
static int open_notify(uint32_t domid)
{
	char path[512];

	shim_path(path, sizeof(path), "notify", domid);
	if (mkfifo(path, 0600) && errno != EEXIST)
		return -1;
	return real_open(path, O_RDWR | O_NONBLOCK, 0);
}

/* Publish the domain's local port (the byte its guest kicks evtchn with). */
static void write_port_file(uint32_t domid, int port)
{
	char path[512], text[32];
	int fd;

	shim_path(path, sizeof(path), "port", domid);
	fd = real_open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return;
	snprintf(text, sizeof(text), "%d\n", port);
	if (write(fd, text, strlen(text)) < 0) {
		/* best effort: a guest then cannot find its port */
	}
	close(fd);
}

int xenevtchn_bind_interdomain(void *xce, uint32_t domid, uint32_t remote_port)
{
	int port = next_port++;

	write_port_file(domid, port);
	if (port < MAX_PORTS) {
		ports[port].bound = 1;
		ports[port].domid = domid;
		ports[port].notify_fd = open_notify(domid);
	}
	trace("bind_interdomain(dom %u, remote %u) -> %d\n", domid, remote_port,
	      port);
	return port;
}

int xenevtchn_unbind(void *xce, uint32_t port)
{
	if (port < MAX_PORTS && ports[port].bound) {
		if (ports[port].notify_fd >= 0)
			close(ports[port].notify_fd);
		ports[port].bound = 0;
	}
	return 0;
}

/*
 * The daemon changed a domain's ring: one byte to that domain's notify FIFO.
 * A full FIFO (EAGAIN) loses nothing, since the guest has a wake-up pending.
 * Always succeeds: oxenstored fails hard when notify returns -1.
 */
int xenevtchn_notify(void *xce, uint32_t port)
{
	unsigned char byte = 1;

	if (port >= MAX_PORTS || !ports[port].bound || ports[port].notify_fd < 0)
		return 0;
	if (write(ports[port].notify_fd, &byte, 1) < 0 && errno != EAGAIN)
		trace("notify dom %u: %s\n", ports[port].domid, strerror(errno));
	return 0;
}

/* One byte from evtchn is one pending port; nothing read is a spurious
 * wake-up, reported as port 0, which neither daemon binds. */
int xenevtchn_pending(void *xce)
{
	unsigned char port;

	if (read(evtchn_fd, &port, 1) != 1)
		return 0;
	trace("pending port %u\n", port);
	return port;
}

/* ---- oxenstored only: limits without privilege, its socket path --------- */

/* Raising RLIMIT_NOFILE's hard limit needs CAP_SYS_RESOURCE: clamp instead. */
int setrlimit(__rlimit_resource_t resource, const struct rlimit *limit)
{
	static int (*next)(__rlimit_resource_t, const struct rlimit *);
	struct rlimit now, clamped;

	if (!next)
		next = dlsym(RTLD_NEXT, "setrlimit");
	if (next(resource, limit) == 0)
		return 0;
	if (errno != EPERM || getrlimit(resource, &now))
		return -1;
	clamped = *limit;
	if (clamped.rlim_max > now.rlim_max)
		clamped.rlim_max = now.rlim_max;
	if (clamped.rlim_cur > clamped.rlim_max)
		clamped.rlim_cur = clamped.rlim_max;
	trace("setrlimit(%d) clamped to %lu\n", (int)resource,
	      (unsigned long)clamped.rlim_max);
	return next(resource, &clamped);
}

/* oxenstored's compiled-in socket paths, moved to $XSFAKE_SOCKET */
static const char *socket_path(const char *path)
{
	static const char *const builtin[] = {
		"/var/run/xenstored/socket", "/run/xenstored/socket",
		"/var/run/xenstored/socket_ro", "/run/xenstored/socket_ro",
	};
	const char *to = getenv("XSFAKE_SOCKET");
	size_t i;

	if (!to || !*to || !path)
		return path;
	for (i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
		if (!strcmp(path, builtin[i]))
			return to;
	return path;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	static int (*next)(int, const struct sockaddr *, socklen_t);
	const struct sockaddr_un *unix_addr = (const void *)addr;
	struct sockaddr_un moved;
	const char *to;

	if (!next)
		next = dlsym(RTLD_NEXT, "bind");
	if (!addr || addr->sa_family != AF_UNIX)
		return next(fd, addr, len);
	to = socket_path(unix_addr->sun_path);
	if (to == unix_addr->sun_path)
		return next(fd, addr, len);
	memset(&moved, 0, sizeof(moved));
	moved.sun_family = AF_UNIX;
	strncpy(moved.sun_path, to, sizeof(moved.sun_path) - 1);
	trace("bind(%s) -> %s\n", unix_addr->sun_path, to);
	return next(fd, (const struct sockaddr *)&moved, sizeof(moved));
}

int unlink(const char *path)
{
	static int (*next)(const char *);

	if (!next)
		next = dlsym(RTLD_NEXT, "unlink");
	return next(socket_path(path));
}

/* The socket's directory under /run: pretend it exists, touch nothing. */
int mkdir(const char *path, mode_t mode)
{
	static int (*next)(const char *, mode_t);
	const char *to = getenv("XSFAKE_SOCKET");

	if (!next)
		next = dlsym(RTLD_NEXT, "mkdir");
	if (to && *to && (!strcmp(path, "/var/run/xenstored") ||
			  !strcmp(path, "/run/xenstored"))) {
		errno = EEXIST;
		return -1;
	}
	return next(path, mode);
}
