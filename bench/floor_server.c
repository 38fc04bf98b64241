/* The least a xenstore daemon can do per request on this machine: the wake-up floor.
 *
 * A Unix-socket server with the shape of any event-driven xenstored (one epoll wait,
 * one read per readable connection, every whole request in the buffer answered, one
 * write) and none of the work: no tree, no permissions, no watches.  Each request gets a
 * reply of its own type with a fixed payload: "v" for READ, "1\0" for
 * TRANSACTION_START, "OK\0" for anything else.  bench/xenstored.py measures it with the
 * same client as the daemons, so its round trip is what the kernel and the machine cost
 * (the client's and the server's wake-ups, the two copies), and a daemon's figure over
 * it is what the daemon itself adds.
 *
 * Usage: floor_server SOCKET_PATH   (runs until SIGTERM)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define HEADER 16
#define BUF (64 * 1024)
#define MAX_FDS 4096

struct conn {
	char in[BUF];
	size_t have;
};

static struct conn *conns[MAX_FDS];

static size_t reply(uint32_t type, const char *req, char *out)
{
	const char *payload = type == 2 ? "v" : type == 6 ? "1" : "OK";
	uint32_t len = type == 2 ? 1 : (uint32_t)strlen(payload) + 1;
	uint32_t hdr[4];

	memcpy(hdr, req, HEADER);
	hdr[0] = type;
	hdr[3] = len;
	memcpy(out, hdr, HEADER);
	memcpy(out + HEADER, payload, len);
	return HEADER + len;
}

/* Answer every whole request in the connection's buffer with one write. */
static int serve(int fd, struct conn *c)
{
	static char out[BUF];
	size_t pos = 0, used = 0;
	ssize_t n = read(fd, c->in + c->have, BUF - c->have);

	if (n <= 0)
		return n == 0 || (errno != EAGAIN && errno != EINTR) ? -1 : 0;
	c->have += (size_t)n;
	while (c->have - pos >= HEADER) {
		uint32_t hdr[4];

		memcpy(hdr, c->in + pos, HEADER);
		if (hdr[3] > BUF - HEADER)
			return -1;
		if (c->have - pos < HEADER + hdr[3] || used + HEADER + 4 > BUF)
			break;
		used += reply(hdr[0], c->in + pos, out + used);
		pos += HEADER + hdr[3];
	}
	memmove(c->in, c->in + pos, c->have - pos);
	c->have -= pos;
	if (used && write(fd, out, used) != (ssize_t)used)
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct epoll_event ev = { .events = EPOLLIN }, ready[64];
	int lfd, ep;

	if (argc != 2 || strlen(argv[1]) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "usage: floor_server SOCKET_PATH (shorter than %zu bytes)\n",
			sizeof(addr.sun_path));
		return 2;
	}
	strcpy(addr.sun_path, argv[1]);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    listen(lfd, 128) < 0) {
		perror(argv[1]);
		return 1;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	ev.data.fd = lfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	for (;;) {
		int n = epoll_wait(ep, ready, 64, -1);

		for (int i = 0; i < n; i++) {
			int fd = ready[i].data.fd;

			if (fd == lfd) {
				int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

				if (c < 0 || c >= MAX_FDS || !(conns[c] = calloc(1, sizeof(struct conn)))) {
					if (c >= 0)
						close(c);
					continue;
				}
				ev.data.fd = c;
				epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
			} else if (serve(fd, conns[fd]) < 0) {
				close(fd);
				free(conns[fd]);
				conns[fd] = NULL;
			}
		}
	}
}
