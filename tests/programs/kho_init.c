// SPDX-License-Identifier: GPL-2.0-only
/*
 * A minimal init that hands KHO over, as the kernel's KHO selftest does under QEMU: mount
 * debugfs at /debugfs and proc at /proc, write "1\0" to kho/out/finalize, read the running
 * kernel's command line, kexec_file_load /kernel with it (no initramfs) and reboot into it.
 * On any error it says what failed and reboots the machine (RB_AUTOBOOT).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/kexec.h>

static int give_up(const char *what)
{
	perror(what);
	reboot(RB_AUTOBOOT);
	return 1;
}

int main(void)
{
	static const char finalize[] = "1";
	char line[2048];
	ssize_t len;
	int fd;

	if (mount("debugfs", "/debugfs", "debugfs", 0, NULL))
		return give_up("mount debugfs");
	if (mount("proc", "/proc", "proc", 0, NULL))
		return give_up("mount proc");
	fd = open("/debugfs/kho/out/finalize", O_RDWR);
	if (fd < 0 || write(fd, finalize, sizeof(finalize)) != sizeof(finalize))
		return give_up("kho/out/finalize");
	close(fd);
	fd = open("/proc/cmdline", O_RDONLY);
	len = fd < 0 ? -1 : read(fd, line, sizeof(line));
	if (len <= 0)
		return give_up("/proc/cmdline");
	close(fd);
	line[len - 1] = '\0';	/* the newline: the kernel wants the NUL in cmdline_len */
	printf("kho_init: reusing '%s'\n", line);
	fflush(stdout);
	fd = open("/kernel", O_RDONLY);
	if (fd < 0)
		return give_up("/kernel");
	if (syscall(SYS_kexec_file_load, fd, -1, (unsigned long)len, line,
		    KEXEC_FILE_NO_INITRAMFS))
		return give_up("kexec_file_load");
	reboot(RB_KEXEC);
	return give_up("reboot(RB_KEXEC)");
}
