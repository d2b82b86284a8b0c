// SPDX-License-Identifier: Apache-2.0
/*
 * meshauth-tcx: attaches the gate's pinned programs to an interface through TCX, the kernel's
 * (6.6+) multi-program tc hook. Debian 12's bpftool (7.1) cannot attach there and the `bpf`
 * npm package has no attach call, so the loader runs this instead of `tc`: a few raw bpf(2)
 * calls, no libbpf. It runs inside the interface's network namespace (nsenter --net, which
 * keeps bpffs visible), where the interface name means something.
 *
 *   meshauth-tcx probe                     exit 0 if TCX is usable here; 3 if the kernel has no
 *                                          TCX, or this process lacks CAP_SYS_ADMIN (without
 *                                          it a hook's programs cannot be opened by id, so the
 *                                          gate could not be found to replace or detach)
 *   meshauth-tcx show DEV                  {"ingress":[{"id":N,"name":"..."}],"egress":[...]}
 *   meshauth-tcx attach DEV HOOK=PIN...    HOOK is ingress or egress. A program on the hook
 *                                          with the pinned program's name is replaced in one
 *                                          step where it runs first (the hook never runs
 *                                          neither); anywhere else, the new one goes first and
 *                                          the old one is detached after; with none, the
 *                                          program goes first (a CNI's redirect must not
 *                                          skip the gate)
 *   meshauth-tcx detach DEV NAME...        removes the programs so named from both hooks
 *
 * Attached this way (not through a link), a program stays until detached or until the
 * interface goes away: an agent that dies leaves the gate enforcing.
 */
#include <errno.h>
#include <linux/bpf.h>
#include <linux/capability.h>
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
#define EXIT_UNUSABLE 3

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

static int program_info(int fd, char name[BPF_OBJ_NAME_LEN], uint32_t *id)
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
	if (id)
		*id = info.id;
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
		if (fd < 0 && errno != ENOENT)
			return -1; /* EPERM without CAP_SYS_ADMIN: nameless programs would hide the gate */
		if (fd >= 0) {
			int named = program_info(fd, out[i].name, NULL);

			close(fd);
			if (named < 0)
				return -1;
		} /* ENOENT: detached meanwhile, no name */
	}
	return count;
}

static int has_sys_admin(void)
{
	struct __user_cap_header_struct header = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];

	if (syscall(SYS_capget, &header, data) < 0)
		return 0;
	return (data[CAP_TO_INDEX(CAP_SYS_ADMIN)].effective & CAP_TO_MASK(CAP_SYS_ADMIN)) != 0;
}

/*
 * A query on loopback's TCX hook: kernels without TCX reject the attach type (EINVAL). Any other
 * failure is an error, not a reason to quietly choose tc.
 */
static int probe(void)
{
	uint32_t ids[MAX_PROGRAMS];
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.query.target_fd = if_nametoindex("lo");
	attr.query.attach_type = TCX_INGRESS;
	attr.query.prog_ids = (uint64_t)(uintptr_t)ids;
	attr.query.prog_cnt = MAX_PROGRAMS;
	if (attr.query.target_fd == 0)
		return fail("no loopback interface", NULL);
	if (sys_bpf(BPF_PROG_QUERY, &attr) < 0 && errno != ENOENT) {
		if (errno != EINVAL)
			return fail("TCX probe", NULL);
		fputs("meshauth-tcx: this kernel has no TCX\n", stderr);
		return EXIT_UNUSABLE;
	}
	if (!has_sys_admin()) {
		fputs("meshauth-tcx: TCX needs CAP_SYS_ADMIN to open a hook's programs by id\n", stderr);
		return EXIT_UNUSABLE;
	}
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
		/* Program names are letters, digits, '_' and '.': nothing to escape. */
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
	int prog, replaced = -1, position = -1, count, status;
	uint32_t id;

	memset(&attr, 0, sizeof(attr));
	attr.pathname = (uint64_t)(uintptr_t)pin;
	prog = sys_bpf(BPF_OBJ_GET, &attr);
	if (prog < 0)
		return fail("open", pin);
	if (program_info(prog, name, &id) < 0)
		return fail("read the name of", pin);
	count = hook_programs(ifindex, hook, programs);
	if (count < 0)
		return fail("query before attaching", pin);
	for (int i = 0; i < count && replaced < 0; i++) {
		if (programs[i].id == id) {
			close(prog); /* already attached (a retried install): wherever it runs, it stays */
			return 0;
		}
		if (strcmp(programs[i].name, name) != 0)
			continue;
		replaced = program_by_id(programs[i].id);
		if (replaced < 0)
			return fail("open the program to replace with", pin);
		position = i;
	}

	memset(&attr, 0, sizeof(attr));
	attr.target_fd = ifindex;
	attr.attach_bpf_fd = (uint32_t)prog;
	attr.attach_type = hook;
	if (position == 0) {
		attr.attach_flags = BPF_F_REPLACE;
		attr.replace_bpf_fd = (uint32_t)replaced;
	} else {
		/* No relative program: the head of the hook. A gate that a CNI pushed down is
		 * detached only below, once its successor runs first. */
		attr.attach_flags = MPROG_F_BEFORE;
	}
	status = sys_bpf(BPF_PROG_ATTACH, &attr) < 0 ? fail("attach", pin) : 0;
	if (status == 0 && position > 0) {
		memset(&attr, 0, sizeof(attr));
		attr.target_fd = ifindex;
		attr.attach_bpf_fd = (uint32_t)replaced;
		attr.attach_type = hook;
		if (sys_bpf(BPF_PROG_DETACH, &attr) < 0 && errno != ENOENT)
			status = fail("detach the gate it moved ahead of", pin);
	}
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
