// SPDX-License-Identifier: Apache-2.0
/*
 * meshauth-tcx: attaches the gate's pinned programs to an interface through TCX, the kernel's
 * (6.6+) multi-program tc hook. Debian 12's bpftool (7.1) cannot attach there and the `bpf`
 * npm package has no attach call, so the loader runs this instead of `tc`: a few raw bpf(2)
 * calls, no libbpf. It runs inside the interface's network namespace (nsenter --net, which
 * keeps bpffs visible), where the interface name means something.
 *
 *   meshauth-tcx probe                     exit 0 if this kernel has TCX
 *   meshauth-tcx show DEV                  {"ingress":[{"id":N,"name":"..."}],"egress":[...]}
 *   meshauth-tcx attach DEV HOOK=PIN...    HOOK is ingress or egress. A program on the hook
 *                                          with the pinned program's name is replaced in one
 *                                          step (the hook never runs neither); otherwise the
 *                                          program goes first, before any other (a CNI's
 *                                          redirect must not skip the gate)
 *   meshauth-tcx detach DEV NAME...        removes the programs so named from both hooks
 *
 * Attached this way (not through a link), a program stays until detached or until the
 * interface goes away: an agent that dies leaves the gate enforcing.
 */
#include <errno.h>
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

static const struct {
	const char *name;
	uint32_t type;
} HOOKS[] = { { "ingress", TCX_INGRESS }, { "egress", TCX_EGRESS } };

struct program {
	uint32_t id;
	char name[BPF_OBJ_NAME_LEN];
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

static int program_by_id(uint32_t id)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.prog_id = id;
	return sys_bpf(BPF_PROG_GET_FD_BY_ID, &attr);
}

static int program_name(int fd, char name[BPF_OBJ_NAME_LEN])
{
	struct bpf_prog_info info;
	union bpf_attr attr;

	memset(&info, 0, sizeof(info));
	memset(&attr, 0, sizeof(attr));
	attr.info.bpf_fd = (uint32_t)fd;
	attr.info.info_len = sizeof(info);
	attr.info.info = (uint64_t)(uintptr_t)&info;
	if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) < 0)
		return -1;
	memcpy(name, info.name, BPF_OBJ_NAME_LEN);
	name[BPF_OBJ_NAME_LEN - 1] = '\0';
	return 0;
}

/* The programs on one hook, first to last, into out[]; returns their count, or -1. */
static int hook_programs(uint32_t ifindex, uint32_t hook, struct program *out)
{
	uint32_t ids[MAX_PROGRAMS];
	union bpf_attr attr;
	int count;

	memset(&attr, 0, sizeof(attr));
	attr.query.target_fd = ifindex;
	attr.query.attach_type = hook;
	attr.query.prog_ids = (uint64_t)(uintptr_t)ids;
	attr.query.prog_cnt = MAX_PROGRAMS;
	if (sys_bpf(BPF_PROG_QUERY, &attr) < 0)
		return errno == ENOENT ? 0 : -1; /* ENOENT: nothing was ever attached here */
	count = attr.query.prog_cnt < MAX_PROGRAMS ? (int)attr.query.prog_cnt : MAX_PROGRAMS;
	for (int i = 0; i < count; i++) {
		int fd = program_by_id(ids[i]);

		out[i].id = ids[i];
		out[i].name[0] = '\0';
		if (fd >= 0) {
			program_name(fd, out[i].name); /* a program detached meanwhile keeps no name */
			close(fd);
		}
	}
	return count;
}

/*
 * A query on loopback's TCX hook: kernels without TCX reject the attach type (EINVAL).
 */
static int probe(void)
{
	struct program programs[MAX_PROGRAMS];

	if (hook_programs(1, TCX_INGRESS, programs) < 0)
		return fail("TCX is not available", NULL);
	return 0;
}

static int show(uint32_t ifindex)
{
	struct program programs[MAX_PROGRAMS];

	putchar('{');
	for (size_t h = 0; h < sizeof(HOOKS) / sizeof(HOOKS[0]); h++) {
		int count = hook_programs(ifindex, HOOKS[h].type, programs);

		if (count < 0)
			return fail("query", HOOKS[h].name);
		printf("%s\"%s\":[", h ? "," : "", HOOKS[h].name);
		/* Program names are C identifiers: nothing to escape. */
		for (int i = 0; i < count; i++)
			printf("%s{\"id\":%u,\"name\":\"%s\"}", i ? "," : "", programs[i].id, programs[i].name);
		putchar(']');
	}
	puts("}");
	return 0;
}

static int attach_one(uint32_t ifindex, uint32_t hook, const char *pin)
{
	struct program programs[MAX_PROGRAMS];
	char name[BPF_OBJ_NAME_LEN];
	union bpf_attr attr;
	int prog, replaced = -1, count, status;

	memset(&attr, 0, sizeof(attr));
	attr.pathname = (uint64_t)(uintptr_t)pin;
	prog = sys_bpf(BPF_OBJ_GET, &attr);
	if (prog < 0)
		return fail("open", pin);
	if (program_name(prog, name) < 0)
		return fail("read the name of", pin);
	count = hook_programs(ifindex, hook, programs);
	if (count < 0)
		return fail("query before attaching", pin);
	for (int i = 0; i < count && replaced < 0; i++) {
		if (strcmp(programs[i].name, name) == 0 && (replaced = program_by_id(programs[i].id)) < 0)
			return fail("open the program to replace with", pin);
	}

	memset(&attr, 0, sizeof(attr));
	attr.target_fd = ifindex;
	attr.attach_bpf_fd = (uint32_t)prog;
	attr.attach_type = hook;
	if (replaced >= 0) {
		attr.attach_flags = BPF_F_REPLACE;
		attr.replace_bpf_fd = (uint32_t)replaced;
	} else {
		attr.attach_flags = MPROG_F_BEFORE; /* no relative program: the head of the hook */
	}
	/* Replacing a program with itself: already attached, nothing to do. */
	status = sys_bpf(BPF_PROG_ATTACH, &attr) < 0 && errno != EEXIST ? fail("attach", pin) : 0;
	if (replaced >= 0)
		close(replaced);
	close(prog);
	return status;
}

static int attach(uint32_t ifindex, int count, char **specs)
{
	for (int i = 0; i < count; i++) {
		char *pin = strchr(specs[i], '=');
		size_t h;

		for (h = 0; pin && h < sizeof(HOOKS) / sizeof(HOOKS[0]); h++) {
			if ((size_t)(pin - specs[i]) == strlen(HOOKS[h].name) &&
			    strncmp(specs[i], HOOKS[h].name, strlen(HOOKS[h].name)) == 0)
				break;
		}
		if (!pin || h == sizeof(HOOKS) / sizeof(HOOKS[0])) {
			fprintf(stderr, "meshauth-tcx: expected ingress=PIN or egress=PIN, not %s\n", specs[i]);
			return 2;
		}
		if (attach_one(ifindex, HOOKS[h].type, pin + 1) != 0)
			return 1;
	}
	return 0;
}

static int detach(uint32_t ifindex, int count, char **names)
{
	struct program programs[MAX_PROGRAMS];

	for (size_t h = 0; h < sizeof(HOOKS) / sizeof(HOOKS[0]); h++) {
		int attached = hook_programs(ifindex, HOOKS[h].type, programs);

		if (attached < 0)
			return fail("query before detaching", HOOKS[h].name);
		for (int i = 0; i < attached; i++) {
			for (int n = 0; n < count; n++) {
				union bpf_attr attr;
				int prog;

				if (strcmp(programs[i].name, names[n]) != 0)
					continue;
				prog = program_by_id(programs[i].id);
				if (prog < 0)
					continue; /* detached meanwhile */
				memset(&attr, 0, sizeof(attr));
				attr.target_fd = ifindex;
				attr.attach_bpf_fd = (uint32_t)prog;
				attr.attach_type = HOOKS[h].type;
				if (sys_bpf(BPF_PROG_DETACH, &attr) < 0 && errno != ENOENT)
					return fail("detach", names[n]);
				close(prog);
			}
		}
	}
	return 0;
}

static int usage(void)
{
	fputs("usage: meshauth-tcx probe\n"
	      "       meshauth-tcx show DEV\n"
	      "       meshauth-tcx attach DEV ingress=PIN|egress=PIN...\n"
	      "       meshauth-tcx detach DEV NAME...\n",
	      stderr);
	return 2;
}

int main(int argc, char **argv)
{
	uint32_t ifindex;

	if (argc == 2 && strcmp(argv[1], "probe") == 0)
		return probe();
	if (argc < 3)
		return usage();
	ifindex = if_nametoindex(argv[2]);
	if (ifindex == 0)
		return fail("no interface", argv[2]);
	if (strcmp(argv[1], "show") == 0 && argc == 3)
		return show(ifindex);
	if (strcmp(argv[1], "attach") == 0 && argc > 3)
		return attach(ifindex, argc - 3, argv + 3);
	if (strcmp(argv[1], "detach") == 0 && argc > 3)
		return detach(ifindex, argc - 3, argv + 3);
	return usage();
}
