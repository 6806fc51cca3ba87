// SPDX-License-Identifier: GPL-2.0-only
/*
 * reboot(2), kexec_load(2) and kexec_file_load(2) called raw, one step per argument, each
 * printed as "STEP -> RESULT [ERRNO]". Nothing dangerous runs before "guard" has proved that
 * this process is PID 1 of a pid namespace of its own (the host's PID 1 is never a test) and
 * that the seccomp filter answers: reboot(CAD_OFF) returns 0 from the emulated kernel, where a
 * reboot that reached the real one from such a namespace would be EINVAL (reboot_pid_ns).
 *
 *   guard | kfl PATH FLAGS | kl | kl32 | reboot CMD | reboot32 CMD | badmagic | loaded
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/kexec.h>
#include <linux/reboot.h>

static int guarded;

static void show(const char *step, long ret)
{
	if (ret < 0)
		printf("%s -> %ld %s\n", step, ret, strerrorname_np(errno));
	else
		printf("%s -> %ld\n", step, ret);
	fflush(stdout);
}

static void need_guard(void)
{
	if (!guarded) {
		printf("refused: no guard\n");
		exit(3);
	}
}

static long guard(void)
{
	long cad;

	if (getpid() != 1) {
		printf("guard: pid %d, not 1\n", getpid());
		exit(3);
	}
	cad = syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
		      LINUX_REBOOT_CMD_CAD_OFF, NULL);
	if (cad != 0) {
		printf("guard: reboot(CAD_OFF) = %ld %s: not the emulated kernel\n", cad,
		       strerrorname_np(errno));
		exit(3);
	}
	guarded = 1;
	return 0;
}

/* The i386 entry from this 64-bit process: int $0x80, arguments in ebx, ecx, edx, esi. */
static long int80(long nr, long a, long b, long c, long d)
{
	long ret;

	asm volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d)
		     : "memory");
	if (ret < 0 && ret > -4096) {
		errno = -ret;
		return -1;
	}
	return ret;
}

static long kexec_classic(int compat)
{
	/* below 4 GiB, so that the 32-bit entry can point at it */
	char *low = mmap(NULL, 8192, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
	struct kexec_segment *seg = (struct kexec_segment *)low;
	uint32_t *seg32 = (uint32_t *)low;
	char *data = low + 4096;

	strcpy(data, "raw segment");
	if (!compat) {
		seg->buf = data;
		seg->bufsz = 4096;
		seg->mem = (void *)0x1000000;
		seg->memsz = 0x200000;
		return syscall(SYS_kexec_load, 0x1000000UL, 1UL, seg, KEXEC_ARCH_DEFAULT);
	}
	seg32[0] = (uint32_t)(uintptr_t)data;
	seg32[1] = 4096;
	seg32[2] = 0x1000000;
	seg32[3] = 0x200000;
	return int80(283, 0x1000000, 1, (long)(uintptr_t)seg32, KEXEC_ARCH_386);
}

int main(int argc, char **argv)
{
	char step[256];

	for (int i = 1; i < argc; i++) {
		const char *op = argv[i];

		if (!strcmp(op, "guard")) {
			show("guard", guard());
		} else if (!strcmp(op, "kfl") && i + 2 < argc) {
			static const char line[] = "kho=on";
			int fd;

			need_guard();
			fd = open(argv[i + 1], O_RDONLY);
			snprintf(step, sizeof(step), "kexec_file_load %s %s", argv[i + 1],
				 argv[i + 2]);
			show(step, syscall(SYS_kexec_file_load, fd, -1, sizeof(line), line,
					   strtoul(argv[i + 2], NULL, 0)));
			i += 2;
		} else if (!strcmp(op, "kl") || !strcmp(op, "kl32")) {
			need_guard();
			show(op[2] ? "kexec_load (i386)" : "kexec_load", kexec_classic(op[2] != 0));
		} else if ((!strcmp(op, "reboot") || !strcmp(op, "reboot32")) && i + 1 < argc) {
			unsigned long cmd = strtoul(argv[i + 1], NULL, 0);

			need_guard();
			snprintf(step, sizeof(step), "%s %#lx", op, cmd);
			if (op[6])
				show(step, int80(88, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, cmd,
						 0));
			else
				show(step, syscall(SYS_reboot, LINUX_REBOOT_MAGIC1,
						   LINUX_REBOOT_MAGIC2, cmd, "khofs"));
			i += 1;
		} else if (!strcmp(op, "badmagic")) {
			need_guard();
			show("badmagic", syscall(SYS_reboot, 1, 2, LINUX_REBOOT_CMD_RESTART, NULL));
		} else if (!strcmp(op, "loaded")) {
			char buf[16] = "";
			int fd = open("/sys/kernel/kexec_loaded", O_RDONLY);
			ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);

			printf("kexec_loaded %s", n > 0 ? buf : "?\n");
			fflush(stdout);
		} else {
			printf("unknown step %s\n", op);
			return 2;
		}
	}
	return 0;
}
