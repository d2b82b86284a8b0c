// SPDX-License-Identifier: Apache-2.0
/*
 * meshauth-tcx: attaches the gate's pinned programs to an interface through TCX, the kernel's
 * (6.6+) multi-program tc hook, with BPF links pinned beside the interface's registry entry.
 * Debian 12's bpftool (7.1) cannot attach there and the `bpf` npm package has no attach call, so
 * the loader runs this instead of `tc`: a few raw bpf(2) calls, no libbpf. It runs inside the
 * interface's network namespace (nsenter --net, which keeps bpffs visible).
 *
 * A pinned link is what keeps the gate attached: it outlives the agent (fail closed), no other
 * tool detaches it by accident, and it is found again by its pin, so no program ever has to be
 * opened by id (which needs CAP_SYS_ADMIN; NET_ADMIN and BPF suffice here).
 *
 *   meshauth-tcx probe                      exit 0 if the kernel has TCX, 3 if it has not
 *   meshauth-tcx attach DEV DIR HOOK=PIN...
 *        HOOK is ingress or egress; the hook's link is pinned at DIR/HOOK. If that link is alive
 *        on DEV and runs first, its program is swapped for PIN's in one step (BPF_LINK_UPDATE).
 *        Otherwise (no link yet, the interface recreated, or a CNI program put ahead of it) a
 *        new link goes first on the hook and is pinned over the old one, which is released
 *        only then: the hook never runs without the gate, and a CNI's redirect cannot skip it.
 *   meshauth-tcx detach DIR                 detaches and unpins DIR/ingress and DIR/egress
 *   meshauth-tcx show DEV DIR               {"ingress":{"link":N,"prog":N,"first":true}|null,...}
 *                                           the gate's links that are alive on DEV
 *   meshauth-tcx list DEV                   {"ingress":["name",...],...} every program, in order
 *                                           (names need CAP_SYS_ADMIN: for tests and people)
 */
#include <errno.h>
#include <limits.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Not in Linux 6.1's UAPI headers, which Debian 12 ships; values from the kernel ABI (6.6). */
enum { TCX_INGRESS = 46, TCX_EGRESS = 47 };
#define MPROG_F_BEFORE (1U << 3)

#define MAX_PROGRAMS 64
#define EXIT_NO_TCX 3

static const struct {
	const char *name;
	uint32_t type;
} HOOKS[] = { { "ingress", TCX_INGRESS }, { "egress", TCX_EGRESS } };
#define HOOK_COUNT (sizeof(HOOKS) / sizeof(HOOKS[0]))

/* bpf_link_info as of 6.6, up to its tcx member (the union starts 8-byte aligned). */
struct tcx_link_info {
	uint32_t type;
	uint32_t id;
	uint32_t prog_id;
	uint32_t pad;
	uint32_t ifindex; /* 0 once the interface is gone: the link is defunct */
	uint32_t attach_type;
};

static int sys_bpf(int cmd, union bpf_attr *attr)
{
	return (int)syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

static int fail(const char *what, const char *detail)
{
	fprintf(stderr, "meshauth-tcx: %s%s%s: %s\n", what, detail ? " " : "", detail ? detail : "",
		strerror(errno));
	return 1;
}

static int open_pin(const char *path)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.pathname = (uint64_t)(uintptr_t)path;
	return sys_bpf(BPF_OBJ_GET, &attr);
}

static int object_info(int fd, void *info, uint32_t len)
{
	union bpf_attr attr;

	memset(info, 0, len);
	memset(&attr, 0, sizeof(attr));
	attr.info.bpf_fd = (uint32_t)fd;
	attr.info.info_len = len;
	attr.info.info = (uint64_t)(uintptr_t)info;
	return sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr);
}

/* Program ids on one hook, first to last; returns their count, or -1. */
static int hook_programs(uint32_t ifindex, uint32_t hook, uint32_t ids[MAX_PROGRAMS])
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.query.target_fd = ifindex;
	attr.query.attach_type = hook;
	attr.query.prog_ids = (uint64_t)(uintptr_t)ids;
	attr.query.prog_cnt = MAX_PROGRAMS;
	if (sys_bpf(BPF_PROG_QUERY, &attr) < 0)
		return errno == ENOENT ? 0 : -1; /* ENOENT: nothing was ever attached here */
	return attr.query.prog_cnt < MAX_PROGRAMS ? (int)attr.query.prog_cnt : MAX_PROGRAMS;
}

/* The link pinned at `pin`, if it is alive on (ifindex, hook): its fd and info; else -1. */
static int live_link(const char *pin, uint32_t ifindex, uint32_t hook, struct tcx_link_info *info)
{
	int fd = open_pin(pin);

	if (fd < 0)
		return -1;
	if (object_info(fd, info, sizeof(*info)) < 0 || info->ifindex != ifindex || info->attach_type != hook) {
		close(fd);
		return -1;
	}
	return fd;
}

/* DIR/HOOK: where a hook's link is pinned. */
static int link_path(char *out, const char *dir, const char *hook)
{
	int n = snprintf(out, PATH_MAX, "%s/%s", dir, hook);

	if (n < 0 || n >= PATH_MAX) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

/* A new link running `prog` first on the hook, pinned at `pin` (replacing whatever was there). */
static int link_first(uint32_t ifindex, uint32_t hook, int prog, const char *pin)
{
	char staged[PATH_MAX];
	union bpf_attr attr;
	int link, status = 0;

	memset(&attr, 0, sizeof(attr));
	attr.link_create.prog_fd = (uint32_t)prog;
	attr.link_create.target_fd = ifindex;
	attr.link_create.attach_type = hook;
	attr.link_create.flags = MPROG_F_BEFORE; /* no relative program: the head of the hook */
	link = sys_bpf(BPF_LINK_CREATE, &attr);
	if (link < 0)
		return fail("attach", pin);
	/* Pinned beside, then renamed over the old pin: the old link goes only once this one runs.
	 * (No dot in the name: bpffs reserves dotted names and refuses them with EPERM.) */
	if (snprintf(staged, sizeof(staged), "%s-staged-%d", pin, (int)getpid()) >= (int)sizeof(staged)) {
		errno = ENAMETOOLONG;
		status = fail("pin", pin);
	} else {
		memset(&attr, 0, sizeof(attr));
		attr.pathname = (uint64_t)(uintptr_t)staged;
		attr.bpf_fd = (uint32_t)link;
		if (sys_bpf(BPF_OBJ_PIN, &attr) < 0)
			status = fail("pin", staged);
		else if (rename(staged, pin) < 0) {
			status = fail("pin", pin);
			unlink(staged);
		}
	}
	close(link); /* on failure this detaches the new link again; the old one stays */
	return status;
}

static int attach_one(uint32_t ifindex, uint32_t hook, const char *prog_pin, const char *pin)
{
	struct tcx_link_info info;
	uint32_t ids[MAX_PROGRAMS];
	int prog, link, status, count;

	prog = open_pin(prog_pin);
	if (prog < 0)
		return fail("open", prog_pin);
	link = live_link(pin, ifindex, hook, &info);
	count = link >= 0 ? hook_programs(ifindex, hook, ids) : 0;
	if (count < 0) {
		status = fail("query", pin);
	} else if (link >= 0 && count > 0 && ids[0] == info.prog_id) {
		union bpf_attr attr;

		memset(&attr, 0, sizeof(attr));
		attr.link_update.link_fd = (uint32_t)link;
		attr.link_update.new_prog_fd = (uint32_t)prog;
		status = sys_bpf(BPF_LINK_UPDATE, &attr) < 0 ? fail("replace", pin) : 0;
	} else {
		status = link_first(ifindex, hook, prog, pin);
	}
	if (link >= 0)
		close(link);
	close(prog);
	return status;
}

static int attach(uint32_t ifindex, const char *dir, int count, char **specs)
{
	for (int i = 0; i < count; i++) {
		char *prog_pin = strchr(specs[i], '=');
		char pin[PATH_MAX];
		size_t h;

		for (h = 0; prog_pin && h < HOOK_COUNT; h++) {
			if ((size_t)(prog_pin - specs[i]) == strlen(HOOKS[h].name) &&
			    strncmp(specs[i], HOOKS[h].name, strlen(HOOKS[h].name)) == 0)
				break;
		}
		if (!prog_pin || h == HOOK_COUNT) {
			fprintf(stderr, "meshauth-tcx: expected ingress=PIN or egress=PIN, not %s\n", specs[i]);
			return 2;
		}
		if (link_path(pin, dir, HOOKS[h].name) < 0)
			return fail("link pin", dir);
		if (attach_one(ifindex, HOOKS[h].type, prog_pin + 1, pin) != 0)
			return 1;
	}
	return 0;
}

static int detach(const char *dir)
{
	for (size_t h = 0; h < HOOK_COUNT; h++) {
		char pin[PATH_MAX];
		union bpf_attr attr;
		int link;

		if (link_path(pin, dir, HOOKS[h].name) < 0)
			return fail("link pin", dir);
		link = open_pin(pin);
		if (link < 0) {
			if (errno == ENOENT)
				continue;
			return fail("open", pin);
		}
		/* Detached explicitly: someone else may hold the link open. */
		memset(&attr, 0, sizeof(attr));
		attr.link_detach.link_fd = (uint32_t)link;
		if (sys_bpf(BPF_LINK_DETACH, &attr) < 0 && errno != ENOLINK) {
			close(link);
			return fail("detach", pin);
		}
		close(link);
		if (unlink(pin) < 0 && errno != ENOENT)
			return fail("unpin", pin);
	}
	return 0;
}

static int show(uint32_t ifindex, const char *dir)
{
	putchar('{');
	for (size_t h = 0; h < HOOK_COUNT; h++) {
		struct tcx_link_info info;
		uint32_t ids[MAX_PROGRAMS];
		char pin[PATH_MAX];
		int link, count;

		if (link_path(pin, dir, HOOKS[h].name) < 0)
			return fail("link pin", dir);
		printf("%s\"%s\":", h ? "," : "", HOOKS[h].name);
		link = live_link(pin, ifindex, HOOKS[h].type, &info);
		if (link < 0) {
			fputs("null", stdout);
			continue;
		}
		close(link);
		count = hook_programs(ifindex, HOOKS[h].type, ids);
		if (count < 0)
			return fail("query", HOOKS[h].name);
		printf("{\"link\":%u,\"prog\":%u,\"first\":%s}", info.id, info.prog_id,
		       count > 0 && ids[0] == info.prog_id ? "true" : "false");
	}
	puts("}");
	return 0;
}

static int list(uint32_t ifindex)
{
	putchar('{');
	for (size_t h = 0; h < HOOK_COUNT; h++) {
		uint32_t ids[MAX_PROGRAMS];
		int count = hook_programs(ifindex, HOOKS[h].type, ids);

		if (count < 0)
			return fail("query", HOOKS[h].name);
		printf("%s\"%s\":[", h ? "," : "", HOOKS[h].name);
		for (int i = 0; i < count; i++) {
			struct bpf_prog_info info;
			union bpf_attr attr;
			int fd;

			memset(&attr, 0, sizeof(attr));
			attr.prog_id = ids[i];
			fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
			if (fd < 0)
				return fail("open program by id (needs CAP_SYS_ADMIN)", NULL);
			if (object_info(fd, &info, sizeof(info)) < 0) {
				close(fd);
				return fail("read program", NULL);
			}
			close(fd);
			info.name[BPF_OBJ_NAME_LEN - 1] = '\0';
			/* Program names are letters, digits, '_' and '.': nothing to escape. */
			printf("%s\"%s\"", i ? "," : "", info.name);
		}
		putchar(']');
	}
	puts("}");
	return 0;
}

/* A query on loopback's TCX hook: kernels without TCX reject the attach type (EINVAL). */
static int probe(void)
{
	uint32_t ids[MAX_PROGRAMS];
	uint32_t lo = if_nametoindex("lo");

	if (lo == 0)
		return fail("no loopback interface", NULL);
	if (hook_programs(lo, TCX_INGRESS, ids) >= 0)
		return 0;
	if (errno != EINVAL)
		return fail("TCX probe", NULL);
	fputs("meshauth-tcx: this kernel has no TCX\n", stderr);
	return EXIT_NO_TCX;
}

static int usage(void)
{
	fputs("usage: meshauth-tcx probe\n"
	      "       meshauth-tcx attach DEV DIR ingress=PIN|egress=PIN...\n"
	      "       meshauth-tcx detach DIR\n"
	      "       meshauth-tcx show DEV DIR\n"
	      "       meshauth-tcx list DEV\n",
	      stderr);
	return 2;
}

static int interface(const char *name, uint32_t *ifindex)
{
	*ifindex = if_nametoindex(name);
	return *ifindex == 0 ? fail("no interface", name) : 0;
}

int main(int argc, char **argv)
{
	uint32_t ifindex;

	if (argc == 2 && strcmp(argv[1], "probe") == 0)
		return probe();
	if (argc == 3 && strcmp(argv[1], "detach") == 0)
		return detach(argv[2]);
	if (argc == 3 && strcmp(argv[1], "list") == 0)
		return interface(argv[2], &ifindex) ?: list(ifindex);
	if (argc == 4 && strcmp(argv[1], "show") == 0)
		return interface(argv[2], &ifindex) ?: show(ifindex, argv[3]);
	if (argc > 4 && strcmp(argv[1], "attach") == 0)
		return interface(argv[2], &ifindex) ?: attach(ifindex, argv[3], argc - 4, argv + 4);
	return usage();
}
