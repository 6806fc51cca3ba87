// SPDX-License-Identifier: GPL-2.0-only
/*
 * cfs: the benchmark's yardstick, a minimal libfuse3 filesystem serving the same tree and
 * bytes as a finalized khofs mount, with the same modes and the same mount options (direct
 * I/O and inode numbers here; the caching timeouts and default_permissions as options).
 *
 *   cfs SRCDIR MOUNTPOINT [libfuse options]
 *
 * The benchmark passes entry_timeout=0,attr_timeout=0,negative_timeout=0 and
 * default_permissions as khofs uses them; use_ino and direct_io are set here.
 *
 * SRCDIR is a copy of a finalized khofs kho/out: fdt, scratch_phys, scratch_len and sub_fdts/.
 * Everything is read into memory at start. finalize reads "1\n" at first; a write is parsed
 * with strtoull(base 0) like kstrtoull and switches the state as kho_out_finalize_set does
 * (ENOENT for 0 when not finalized, EEXIST for 1 when finalized); while not finalized, fdt
 * and the sub_fdts entries are gone.
 *
 * Build: cc -O2 -Wall -o cfs cfs.c $(pkg-config --cflags --libs fuse3)
 */
#define FUSE_USE_VERSION 31
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_NODES 4096

struct node {
	char *path;		/* "/kho/out/fdt" */
	int parent;		/* index of the directory holding it; -1 for the root */
	mode_t mode;
	char *data;		/* regular files: the bytes served */
	size_t size;
	int finalized_only;	/* fdt and sub_fdts/ entries */
	int is_finalize;
};

static struct node nodes[MAX_NODES];
static int nnodes;
static int finalized = 1;
static struct timespec born;

static int add(const char *path, int parent, mode_t mode, char *data, size_t size,
	       int finalized_only)
{
	struct node *n = &nodes[nnodes];

	if (nnodes == MAX_NODES) {
		fprintf(stderr, "cfs: too many files\n");
		exit(1);
	}
	n->path = strdup(path);
	n->parent = parent;
	n->mode = mode;
	n->data = data;
	n->size = size;
	n->finalized_only = finalized_only;
	n->is_finalize = !strcmp(path, "/kho/out/finalize");
	return nnodes++;
}

static char *slurp(const char *dir, const char *name, size_t *size)
{
	char path[4096];
	struct stat st;
	char *buf;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (!f || fstat(fileno(f), &st)) {
		perror(path);
		exit(1);
	}
	buf = malloc(st.st_size ? st.st_size : 1);
	if (!buf || fread(buf, 1, st.st_size, f) != (size_t)st.st_size) {
		perror(path);
		exit(1);
	}
	fclose(f);
	*size = st.st_size;
	return buf;
}

static void load(const char *src)
{
	static const char *const shows[] = { "scratch_phys", "scratch_len" };
	char dir[4096], path[4096];
	struct dirent *de;
	int out, subs;
	size_t size;
	char *data;
	DIR *d;

	add("/", -1, S_IFDIR | 0700, NULL, 0, 0);
	add("/kho", 0, S_IFDIR | 0755, NULL, 0, 0);
	out = add("/kho/out", 1, S_IFDIR | 0755, NULL, 0, 0);
	add("/kho/out/finalize", out, S_IFREG | 0600, NULL, 0, 0);
	for (int i = 0; i < 2; i++) {
		data = slurp(src, shows[i], &size);
		snprintf(path, sizeof(path), "/kho/out/%s", shows[i]);
		add(path, out, S_IFREG | 0400, data, size, 0);
	}
	data = slurp(src, "fdt", &size);
	add("/kho/out/fdt", out, S_IFREG | 0400, data, size, 1);
	subs = add("/kho/out/sub_fdts", out, S_IFDIR | 0755, NULL, 0, 0);
	snprintf(dir, sizeof(dir), "%s/sub_fdts", src);
	d = opendir(dir);
	if (!d) {
		perror(dir);
		exit(1);
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		data = slurp(dir, de->d_name, &size);
		snprintf(path, sizeof(path), "/kho/out/sub_fdts/%s", de->d_name);
		add(path, subs, S_IFREG | 0400, data, size, 1);
	}
	closedir(d);
}

static struct node *find(const char *path)
{
	for (int i = 0; i < nnodes; i++)
		if (!strcmp(nodes[i].path, path))
			return nodes[i].finalized_only && !finalized ? NULL : &nodes[i];
	return NULL;
}

static void *cfs_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->use_ino = 1;
	cfg->direct_io = 1;
	return NULL;
}

static int cfs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	struct node *n = find(path);

	(void)fi;
	if (!n)
		return -ENOENT;
	memset(st, 0, sizeof(*st));
	st->st_ino = n - nodes + 1;
	st->st_mode = n->mode;
	st->st_nlink = 1;
	if (S_ISDIR(n->mode)) {
		st->st_nlink = 2;
		for (int i = 0; i < nnodes; i++)
			if (nodes[i].parent == n - nodes && S_ISDIR(nodes[i].mode))
				st->st_nlink++;
	}
	st->st_blksize = 4096;
	st->st_atim = st->st_mtim = st->st_ctim = born;
	return 0;
}

static int cfs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
		       struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	struct node *n = find(path);

	(void)off, (void)fi, (void)flags;
	if (!n)
		return -ENOENT;
	if (!S_ISDIR(n->mode))
		return -ENOTDIR;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	for (int i = 0; i < nnodes; i++)
		if (nodes[i].parent == n - nodes && (!nodes[i].finalized_only || finalized))
			fill(buf, strrchr(nodes[i].path, '/') + 1, NULL, 0, 0);
	return 0;
}

static int cfs_open(const char *path, struct fuse_file_info *fi)
{
	struct node *n = find(path);

	if (!n)
		return -ENOENT;
	fi->direct_io = 1;
	fi->nonseekable = n->is_finalize;
	return 0;
}

static int cfs_read(const char *path, char *buf, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct node *n = find(path);
	char state[3] = { finalized ? '1' : '0', '\n', 0 };
	const char *data;
	size_t len;

	(void)fi;
	if (!n)
		return -EIO;
	data = n->is_finalize ? state : n->data;
	len = n->is_finalize ? 2 : n->size;
	if ((size_t)off >= len)
		return 0;
	if (size > len - off)
		size = len - off;
	memcpy(buf, data + off, size);
	return size;
}

static int cfs_write(const char *path, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct node *n = find(path);
	char text[24], *end;
	unsigned long long val;

	(void)off, (void)fi;
	if (!n || !n->is_finalize)
		return -EINVAL;
	snprintf(text, sizeof(text), "%.*s", (int)(size < 23 ? size : 23), buf);
	errno = 0;
	val = strtoull(text, &end, 0);
	if (end == text || text[0] == '-' || text[0] == ' ')
		return -EINVAL;
	if (*end == '\n')
		end++;
	if (*end)
		return -EINVAL;
	if (errno)
		return -errno;
	if (!!val == finalized)
		return finalized ? -EEXIST : -ENOENT;
	finalized = !!val;
	return size;
}

static int cfs_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	(void)size, (void)fi;
	return find(path) ? 0 : -ENOENT;
}

static const struct fuse_operations ops = {
	.init = cfs_init,
	.getattr = cfs_getattr,
	.readdir = cfs_readdir,
	.open = cfs_open,
	.read = cfs_read,
	.write = cfs_write,
	.truncate = cfs_truncate,
};

int main(int argc, char *argv[])
{
	if (argc < 3) {
		fprintf(stderr, "usage: cfs SRCDIR MOUNTPOINT [libfuse options]\n");
		return 2;
	}
	clock_gettime(CLOCK_REALTIME, &born);
	load(argv[1]);
	argv[1] = argv[0];
	return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
