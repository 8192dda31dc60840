/*
 * lunet_download against tests/data/http_server.py on the loopback: good
 * transfers, resume, retries, HTTP errors, checksums, stalls, Ctrl-C, stale
 * .part files, and two downloads of one file at once (the .lock).
 * The expected digests of the served file were computed with Python's
 * hashlib from the same byte formula (see blob_byte).
 */
#define _GNU_SOURCE
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lunet/data.h"

#ifndef DATA_TEST_DIR
#define DATA_TEST_DIR "tests/data"
#endif

#define BLOB_SIZE 300000
#define BLOB_SHA256 "10e5ea249ba15cf9da0925b29f6caca069e088f63eec3521e5560c1a0394058a"
#define BLOB_MD5 "384d43b457e4391d851b65dec6507b1e"
/* The same bytes with the first one inverted (what /wrong/ serves). */
#define WRONG_SHA256 "d0301aa180e16fac3ccd109adae5801f90ad67fdabeba2e4a1f0fcf80e2f9396"
/* small.bin: the first SMALL_SIZE bytes of the same formula (hashlib too);
 * /slow/ serves it in 10 chunks over about 1 s. */
#define SMALL_SIZE 40960
#define SMALL_SHA256 "d0642aa1dfee48a3057ccef8e9cad16cc3f91da08c2e621de333991bde9b513c"

static char tmpdir[] = "/tmp/lunet_data_dl_XXXXXX";
static char srvdir[256], logpath[256];
static pid_t server_pid = -1, tls_pid = -1;
static int port, tls_port;
static lunet_ctx *ctx;

static uint8_t blob_byte(uint32_t i) { return (uint8_t)((uint32_t)(i * 2654435761u) >> 13); }

static void write_blob_n(const char *path, uint32_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) abort();
  for (uint32_t i = 0; i < n; i++) fputc(blob_byte(i), f);
  fclose(f);
}

static void write_blob(const char *path) { write_blob_n(path, BLOB_SIZE); }

/* Starts http_server.py serving srvdir (HTTPS with `tls` when not NULL);
 * returns its pid and stores its port. */
static pid_t spawn_server(const char *tls, int *port_out) {
  int fds[2];
  if (pipe(fds) != 0) abort();
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    if (tls)
      execlp("python3", "python3", DATA_TEST_DIR "/http_server.py", srvdir, "--log", logpath, "--timeout", "120",
             "--tls", tls, (char *)NULL);
    else
      execlp("python3", "python3", DATA_TEST_DIR "/http_server.py", srvdir, "--log", logpath, "--timeout", "120",
             (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  FILE *f = fdopen(fds[0], "r");
  if (!f || fscanf(f, "%d", port_out) != 1) {
    fprintf(stderr, "test_download: the HTTP server did not start\n");
    abort();
  }
  fclose(f);
  return pid;
}

/* Starts the servers (once, in Check's parent process): plain HTTP, and
 * HTTPS with a self-signed certificate. */
static void start_server(void) {
  if (!mkdtemp(tmpdir)) abort();
  snprintf(srvdir, sizeof srvdir, "%s/srv", tmpdir);
  snprintf(logpath, sizeof logpath, "%s/requests.log", tmpdir);
  mkdir(srvdir, 0755);
  char blob[300];
  snprintf(blob, sizeof blob, "%s/blob.bin", srvdir);
  write_blob(blob);
  snprintf(blob, sizeof blob, "%s/small.bin", srvdir);
  write_blob_n(blob, SMALL_SIZE);
  server_pid = spawn_server(NULL, &port);
  tls_pid = spawn_server(DATA_TEST_DIR "/selfsigned.pem", &tls_port);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(path);
}

static void stop_server(void) {
  pid_t pids[2] = {server_pid, tls_pid};
  for (int i = 0; i < 2; i++)
    if (pids[i] > 0) {
      kill(pids[i], SIGTERM);
      waitpid(pids[i], NULL, 0);
    }
  nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup(void) {
  ctx = lunet_ctx_new();
  lunet_interrupt_clear();
}

static void teardown(void) { lunet_ctx_free(ctx); }

/* ---- helpers ---- */

static char *url_of(const char *path) {
  static char buf[4][256];
  static int k;
  char *u = buf[k++ % 4];
  snprintf(u, 256, "http://127.0.0.1:%d%s", port, path);
  return u;
}

static char *dest_of(const char *name) {
  static char buf[4][300];
  static int k;
  char *d = buf[k++ % 4];
  snprintf(d, 300, "%s/%s/blob.bin", tmpdir, name);
  return d;
}

static long size_of(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static long size_with(const char *dest, const char *suffix) {
  char p[400];
  snprintf(p, sizeof p, "%s%s", dest, suffix);
  return size_of(p);
}

static void assert_blob_n(const char *path, uint32_t n) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  uint32_t i = 0;
  int c;
  while ((c = fgetc(f)) != EOF) {
    ck_assert_msg(i < n && c == blob_byte(i), "byte %u differs", i);
    i++;
  }
  fclose(f);
  ck_assert_uint_eq(i, n);
}

static void assert_blob(const char *path) { assert_blob_n(path, BLOB_SIZE); }

static void make_dest_dir(const char *dest) {
  char p[400];
  snprintf(p, sizeof p, "%s", dest);
  *strrchr(p, '/') = '\0';
  mkdir(p, 0755);
}

/* dest's folder and a "<dest>.part" of n copies of byte c (not the blob). */
static void stale_part(const char *dest, int c, long n) {
  char p[400];
  make_dest_dir(dest);
  snprintf(p, sizeof p, "%s.part", dest);
  FILE *f = fopen(p, "wb");
  ck_assert_ptr_nonnull(f);
  for (long i = 0; i < n; i++) fputc(c, f);
  fclose(f);
}

/* The server's log lines for one request path, joined by '|'. */
static char *log_for(const char *path) {
  static char out[1024];
  out[0] = '\0';
  FILE *f = fopen(logpath, "r");
  if (!f) return out;
  char line[512];
  size_t n = strlen(path);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, path, n) != 0 || line[n] != ' ') continue;
    line[strcspn(line, "\n")] = '\0';
    if (out[0]) strcat(out, "|");
    strncat(out, line + n + 1, sizeof out - strlen(out) - 1);
  }
  fclose(f);
  return out;
}

static lunet_download_opts fast_opts(const char *path, const char *dest) {
  lunet_download_opts o = lunet_download_opts_default();
  o.url = url_of(path);
  o.dest = dest;
  o.retries = 0;
  o.backoff_ms = 10;
  o.connect_timeout_s = 5;
  o.stall_timeout_s = 5;
  o.progress = LUNET_PROGRESS_NONE;
  return o;
}

/* ---- tests ---- */

START_TEST(good_download_with_checksums) {
  char *dest = dest_of("good");
  lunet_download_opts o = fast_opts("/ok/good/blob.bin", dest);
  o.size = BLOB_SIZE;
  o.sha256 = BLOB_SHA256;
  o.md5 = BLOB_MD5;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_int_eq(size_with(dest, ".part"), -1);
  ck_assert_str_eq(log_for("/ok/good/blob.bin"), "- 200");
}
END_TEST

START_TEST(resume_after_truncation) {
  char *dest = dest_of("resume");
  lunet_download_opts o = fast_opts("/truncate/resume/blob.bin", dest);
  o.sha256 = BLOB_SHA256;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_NET);
  ck_assert_int_eq(size_with(dest, ".part"), BLOB_SIZE / 2);
  ck_assert_int_eq(size_of(dest), -1);
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_str_eq(log_for("/truncate/resume/blob.bin"), "- 200|bytes=150000- 206");
}
END_TEST

START_TEST(resume_within_one_call) {
  char *dest = dest_of("resume1");
  lunet_download_opts o = fast_opts("/truncate/resume1/blob.bin", dest);
  o.size = BLOB_SIZE;
  o.md5 = BLOB_MD5;
  o.retries = 2;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_str_eq(log_for("/truncate/resume1/blob.bin"), "- 200|bytes=150000- 206");
}
END_TEST

START_TEST(server_ignoring_range_restarts) {
  char *dest = dest_of("norange");
  lunet_download_opts o = fast_opts("/truncnorange/x/blob.bin", dest);
  o.sha256 = BLOB_SHA256;
  o.retries = 1;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_str_eq(log_for("/truncnorange/x/blob.bin"), "- 200|bytes=150000- 200");
}
END_TEST

START_TEST(range_416_restarts) {
  char *dest = dest_of("r416");
  lunet_download_opts o = fast_opts("/trunc416/x/blob.bin", dest);
  o.sha256 = BLOB_SHA256;
  o.retries = 1;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_str_eq(log_for("/trunc416/x/blob.bin"), "- 200|bytes=150000- 416|- 200");
}
END_TEST

START_TEST(retry_after_transient_500s) {
  char *dest = dest_of("flaky");
  lunet_download_opts o = fast_opts("/flaky2/x/blob.bin", dest);
  o.sha256 = BLOB_SHA256;
  o.retries = 3;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_str_eq(log_for("/flaky2/x/blob.bin"), "- 500|- 500|- 200");
}
END_TEST

START_TEST(http_404_names_url_and_code) {
  char *dest = dest_of("e404");
  lunet_download_opts o = fast_opts("/404/x/blob.bin", dest);
  o.retries = 3; /* a 404 is final: no retries */
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_NET);
  char want[300];
  snprintf(want, sizeof want, "%s: HTTP 404 (Not Found)", url_of("/404/x/blob.bin"));
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
  ck_assert_str_eq(log_for("/404/x/blob.bin"), "- 404");
  ck_assert_int_eq(size_of(dest), -1);
}
END_TEST

START_TEST(redirect_loop_is_an_error) {
  char *dest = dest_of("loop");
  lunet_download_opts o = fast_opts("/loop/x/blob.bin", dest);
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_NET);
  ck_assert_ptr_nonnull(strstr(lunet_ctx_error(ctx), url_of("/loop/x/blob.bin")));
  ck_assert_ptr_nonnull(strstr(lunet_ctx_error(ctx), "redirect"));
  ck_assert_int_eq(size_of(dest), -1);
}
END_TEST

/* A server that declares 100 bytes fewer than it sends: the transfer ends
 * short of the expected size, an error saying so (the part kept for a
 * resume), never a short file under the target name. */
START_TEST(content_length_lie_is_caught) {
  char *dest = dest_of("liar");
  lunet_download_opts o = fast_opts("/liar/x/blob.bin", dest);
  o.size = BLOB_SIZE;
  o.sha256 = BLOB_SHA256;
  lunet_status st = lunet_download(ctx, &o);
  ck_assert_msg(st == LUNET_ERR_NET, "status %d: %s", (int)st, lunet_ctx_error(ctx));
  char want[64];
  snprintf(want, sizeof want, "sent %d of %d bytes", BLOB_SIZE - 100, BLOB_SIZE);
  ck_assert_ptr_nonnull(strstr(lunet_ctx_error(ctx), want));
  ck_assert_int_eq(size_of(dest), -1);
}
END_TEST

START_TEST(http_500_gives_up_after_retries) {
  char *dest = dest_of("e500");
  lunet_download_opts o = fast_opts("/500/x/blob.bin", dest);
  o.retries = 1;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_NET);
  char want[300];
  snprintf(want, sizeof want, "%s: HTTP 500 (Internal Server Error) (gave up after 2 attempts)",
           url_of("/500/x/blob.bin"));
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
  ck_assert_str_eq(log_for("/500/x/blob.bin"), "- 500|- 500");
}
END_TEST

START_TEST(mirror_after_dead_url) {
  char *dest = dest_of("mirror");
  lunet_download_opts o = fast_opts("/404/m/blob.bin", dest);
  const char *mirrors[] = {url_of("/ok/m/blob.bin"), NULL};
  o.mirrors = mirrors;
  o.sha256 = BLOB_SHA256;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_str_eq(log_for("/404/m/blob.bin"), "- 404");
  ck_assert_str_eq(log_for("/ok/m/blob.bin"), "- 200");
}
END_TEST

START_TEST(all_urls_failing_lists_each) {
  char *dest = dest_of("allfail");
  lunet_download_opts o = fast_opts("/404/mm/blob.bin", dest);
  const char *mirrors[] = {url_of("/500/mm/blob.bin"), NULL};
  o.mirrors = mirrors;
  o.retries = 1;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_NET);
  char want[600];
  snprintf(want, sizeof want,
           "all 2 urls failed: %s: HTTP 404 (Not Found); %s: HTTP 500 (Internal Server Error) "
           "(gave up after 3 attempts)",
           url_of("/404/mm/blob.bin"), url_of("/500/mm/blob.bin"));
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
  ck_assert_str_eq(log_for("/404/mm/blob.bin"), "- 404");
  ck_assert_str_eq(log_for("/500/mm/blob.bin"), "- 500|- 500");
}
END_TEST

START_TEST(wrong_checksum_moves_file_aside) {
  char *dest = dest_of("wrong");
  lunet_download_opts o = fast_opts("/wrong/x/blob.bin", dest);
  o.sha256 = BLOB_SHA256;
  o.retries = 2; /* the same bytes again would not help: no retries */
  lunet_status st = lunet_download(ctx, &o);
  ck_assert_msg(st == LUNET_ERR_CHECKSUM, "status %d: %s", (int)st, lunet_ctx_error(ctx));
  ck_assert_int_eq(size_of(dest), -1);
  ck_assert_int_eq(size_with(dest, ".part"), -1);
  ck_assert_int_eq(size_with(dest, ".corrupt"), BLOB_SIZE);
  char want[800];
  snprintf(want, sizeof want,
           "%s: checksum mismatch: expected sha256 " BLOB_SHA256 ", got " WRONG_SHA256
           "; the file was moved to %s.corrupt (pass the right checksum, or another url)",
           url_of("/wrong/x/blob.bin"), dest);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
  ck_assert_str_eq(log_for("/wrong/x/blob.bin"), "- 200");
}
END_TEST

START_TEST(stall_times_out) {
  char *dest = dest_of("stall");
  lunet_download_opts o = fast_opts("/stall/x/blob.bin", dest);
  o.stall_timeout_s = 1;
  o.stall_bytes_per_s = 1000; /* curl averages speed over ~5 s: 1000 B then silence */
  time_t t0 = time(NULL);
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_NET);
  ck_assert_int_le(time(NULL) - t0, 5);
  char want[300];
  snprintf(want, sizeof want,
           "%s: the transfer stalled (under 1000 bytes/s for 1 s) after 1000 bytes: ",
           url_of("/stall/x/blob.bin"));
  ck_assert_msg(strncmp(lunet_ctx_error(ctx), want, strlen(want)) == 0, "got: %s",
                lunet_ctx_error(ctx));
  ck_assert_int_eq(size_with(dest, ".part"), 1000);
  ck_assert_int_eq(size_of(dest), -1);
}
END_TEST

START_TEST(stale_part_is_fetched_again_from_zero) {
  char *dest = dest_of("stale");
  stale_part(dest, 0xAA, BLOB_SIZE / 2);
  lunet_download_opts o = fast_opts("/ok/stale/blob.bin", dest);
  o.sha256 = BLOB_SHA256;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_int_eq(size_with(dest, ".part"), -1);
  ck_assert_int_eq(size_with(dest, ".corrupt"), BLOB_SIZE); /* stale half + good half */
  ck_assert_str_eq(log_for("/ok/stale/blob.bin"), "bytes=150000- 206|- 200");
}
END_TEST

START_TEST(complete_stale_part_is_fetched_again) {
  char *dest = dest_of("stalefull");
  stale_part(dest, 0x55, BLOB_SIZE);
  lunet_download_opts o = fast_opts("/ok/stalefull/blob.bin", dest);
  o.size = BLOB_SIZE; /* a .part of this size is taken as complete without a request */
  o.sha256 = BLOB_SHA256;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_int_eq(size_with(dest, ".corrupt"), BLOB_SIZE);
  ck_assert_str_eq(log_for("/ok/stalefull/blob.bin"), "- 200");
}
END_TEST

START_TEST(wrong_file_fails_only_after_a_fresh_transfer) {
  char *dest = dest_of("stalewrong");
  stale_part(dest, 0xAA, BLOB_SIZE / 2);
  lunet_download_opts o = fast_opts("/wrong/stalewrong/blob.bin", dest);
  o.sha256 = BLOB_SHA256;
  o.retries = 2; /* the fresh transfer's mismatch is final: no retries */
  lunet_status st = lunet_download(ctx, &o);
  ck_assert_msg(st == LUNET_ERR_CHECKSUM, "status %d: %s", (int)st, lunet_ctx_error(ctx));
  ck_assert_int_eq(size_of(dest), -1);
  ck_assert_int_eq(size_with(dest, ".part"), -1);
  ck_assert_int_eq(size_with(dest, ".corrupt"), BLOB_SIZE);
  char want[800];
  snprintf(want, sizeof want,
           "%s: checksum mismatch: expected sha256 " BLOB_SHA256 ", got " WRONG_SHA256
           "; the file was moved to %s.corrupt (pass the right checksum, or another url)",
           url_of("/wrong/stalewrong/blob.bin"), dest);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
  ck_assert_str_eq(log_for("/wrong/stalewrong/blob.bin"), "bytes=150000- 206|- 200");
}
END_TEST

/* A download on a thread of its own, with its own context. */
struct job {
  lunet_download_opts o;
  lunet_status rc;
  char err[600];
  volatile int done;
  pthread_t th;
};

static void *run_job(void *arg) {
  struct job *j = arg;
  lunet_ctx *c = lunet_ctx_new();
  j->rc = lunet_download(c, &j->o);
  snprintf(j->err, sizeof j->err, "%s", lunet_ctx_error(c));
  lunet_ctx_free(c);
  __atomic_store_n(&j->done, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

START_TEST(lock_waits_then_keeps_the_finished_file) {
  char *dest = dest_of("locked"), lock[400], errpath[400];
  make_dest_dir(dest);
  snprintf(lock, sizeof lock, "%s.lock", dest);
  snprintf(errpath, sizeof errpath, "%s/locked/stderr.txt", tmpdir);
  int lfd = open(lock, O_RDWR | O_CREAT, 0644); /* "another process" holds the lock */
  ck_assert_int_ge(lfd, 0);
  ck_assert_int_eq(flock(lfd, LOCK_EX), 0);
  int saved = dup(2), efd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  dup2(efd, 2);
  struct job j = {.o = fast_opts("/ok/locked/blob.bin", dest)};
  j.o.sha256 = BLOB_SHA256;
  j.o.progress = LUNET_PROGRESS_AUTO; /* so the wait is reported */
  pthread_create(&j.th, NULL, run_job, &j);
  sleep_ms(400);
  ck_assert_int_eq(__atomic_load_n(&j.done, __ATOMIC_SEQ_CST), 0);
  ck_assert_int_eq(size_with(dest, ".part"), -1);
  write_blob(dest); /* what the holder leaves before it unlocks */
  flock(lfd, LOCK_UN);
  close(lfd);
  pthread_join(j.th, NULL);
  dup2(saved, 2);
  close(saved);
  close(efd);
  ck_assert_msg(j.rc == LUNET_OK, "got %d: %s", j.rc, j.err);
  assert_blob(dest);
  ck_assert_str_eq(log_for("/ok/locked/blob.bin"), ""); /* no request */
  char said[800] = "", want[800];
  FILE *f = fopen(errpath, "r");
  ck_assert_ptr_nonnull(f);
  size_t n = fread(said, 1, sizeof said - 1, f);
  said[n] = '\0';
  fclose(f);
  snprintf(want, sizeof want,
           "blob.bin: waiting for another download of %s to finish (%s is locked)\n", dest, lock);
  ck_assert_str_eq(said, want);
}
END_TEST

START_TEST(concurrent_downloads_take_turns) {
  char *dest = dest_of("twice");
  struct job j[2];
  for (int k = 0; k < 2; k++) {
    memset(&j[k], 0, sizeof j[k]);
    j[k].o = fast_opts("/slow/twice/small.bin", dest);
    j[k].o.size = SMALL_SIZE;
    j[k].o.sha256 = SMALL_SHA256;
    pthread_create(&j[k].th, NULL, run_job, &j[k]);
  }
  for (int k = 0; k < 2; k++) {
    pthread_join(j[k].th, NULL);
    ck_assert_msg(j[k].rc == LUNET_OK, "job %d got %d: %s", k, j[k].rc, j[k].err);
  }
  assert_blob_n(dest, SMALL_SIZE);
  /* the second found the first one's verified file: one request in all */
  ck_assert_str_eq(log_for("/slow/twice/small.bin"), "- 200");
  ck_assert_int_eq(size_with(dest, ".part"), -1);
}
END_TEST

START_TEST(vanished_part_is_reported) {
  char *dest = dest_of("vanish"), part[400];
  snprintf(part, sizeof part, "%s.part", dest);
  struct job j = {.o = fast_opts("/slow/vanish/small.bin", dest)};
  j.o.size = SMALL_SIZE;
  pthread_create(&j.th, NULL, run_job, &j);
  sleep_ms(400); /* mid-transfer: 10 chunks 100 ms apart */
  ck_assert_int_eq(remove(part), 0);
  pthread_join(j.th, NULL);
  ck_assert_int_eq(j.rc, LUNET_ERR_IO);
  char want[800];
  snprintf(want, sizeof want,
           "%s: %s vanished during the download (removed by another program?); run again",
           url_of("/slow/vanish/small.bin"), part);
  ck_assert_str_eq(j.err, want);
  ck_assert_int_eq(size_of(dest), -1);
}
END_TEST

static void *interrupt_later(void *arg) {
  (void)arg;
  struct timespec ts = {0, 300 * 1000 * 1000};
  nanosleep(&ts, NULL);
  lunet_interrupt();
  return NULL;
}

START_TEST(interrupt_keeps_part) {
  char *dest = dest_of("intr");
  lunet_download_opts o = fast_opts("/slow/x/blob.bin", dest);
  o.retries = 3;
  pthread_t th;
  pthread_create(&th, NULL, interrupt_later, NULL);
  time_t t0 = time(NULL);
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_INTERRUPTED);
  pthread_join(th, NULL);
  lunet_interrupt_clear();
  ck_assert_int_le(time(NULL) - t0, 3);
  long part = size_with(dest, ".part");
  ck_assert_int_gt(part, 0);
  ck_assert_int_lt(part, BLOB_SIZE);
  char want[400];
  snprintf(want, sizeof want, "download of %s interrupted; %s.part kept (%ld bytes)",
           url_of("/slow/x/blob.bin"), dest, part);
  ck_assert_msg(strncmp(lunet_ctx_error(ctx), want, strlen(want)) == 0, "got: %s",
                lunet_ctx_error(ctx));
}
END_TEST

START_TEST(connection_refused_names_url) {
  char *dest = dest_of("refused");
  lunet_download_opts o = fast_opts("", dest);
  o.url = "http://127.0.0.1:1/x/blob.bin";
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_NET);
  const char *msg = lunet_ctx_error(ctx);
  ck_assert_msg(strncmp(msg, "http://127.0.0.1:1/x/blob.bin: Failed to connect", 48) == 0,
                "got: %s", msg);
}
END_TEST

START_TEST(dns_failure_names_the_host) {
  char *dest = dest_of("dns");
  lunet_download_opts o = fast_opts("", dest);
  o.url = "http://lunet-test.invalid/x/blob.bin"; /* .invalid never resolves (RFC 6761) */
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_NET);
  const char *msg = lunet_ctx_error(ctx);
  ck_assert_msg(strstr(msg, "http://lunet-test.invalid/x/blob.bin: ") == msg &&
                    strstr(msg, "resolve host") && strstr(msg, "lunet-test.invalid"),
                "got: %s", msg);
  ck_assert_int_eq(size_of(dest), -1);
}
END_TEST

/* A self-signed certificate is refused, once (not retried as if the
 * network were flaky), naming the certificate problem. */
START_TEST(tls_self_signed_is_refused) {
  char *dest = dest_of("tls");
  lunet_download_opts o = fast_opts("", dest);
  char url[256];
  snprintf(url, sizeof url, "https://127.0.0.1:%d/ok/tls/blob.bin", tls_port);
  o.url = url;
  o.retries = 3;
  o.backoff_ms = 2000;
  time_t t0 = time(NULL);
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_NET);
  ck_assert_int_le(time(NULL) - t0, 3);
  const char *msg = lunet_ctx_error(ctx);
  ck_assert_msg(strstr(msg, url) == msg && strstr(msg, "certificate"), "got: %s", msg);
  ck_assert_str_eq(log_for("/ok/tls/blob.bin"), ""); /* no request got through the handshake */
  ck_assert_int_eq(size_of(dest), -1);
}
END_TEST

/* The disk fills up (a file-size limit in this test's own process): an I/O
 * error that says so and keeps what was written for a later resume.  The
 * SIGXFSZ the limit raises would kill the process first: the download
 * ignores it while it writes, and puts the default back after. */
START_TEST(full_disk_keeps_the_part) {
  char *dest = dest_of("full");
  lunet_download_opts o = fast_opts("/ok/full/blob.bin", dest);
  o.retries = 2;
  struct rlimit lim = {100000, 100000};
  ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_IO);
  struct sigaction now;
  ck_assert_int_eq(sigaction(SIGXFSZ, NULL, &now), 0);
  ck_assert_msg(now.sa_handler == SIG_DFL, "SIGXFSZ's default is back");
  char want[400];
  snprintf(want, sizeof want, "cannot write %s.part: File too large (the disk is full or a file size limit", dest);
  ck_assert_msg(strncmp(lunet_ctx_error(ctx), want, strlen(want)) == 0, "got: %s", lunet_ctx_error(ctx));
  ck_assert_str_eq(log_for("/ok/full/blob.bin"), "- 200"); /* not retried: the disk will not empty itself */
  long part = size_with(dest, ".part");
  ck_assert_int_gt(part, 0);
  ck_assert_int_le(part, 100000);
  lim.rlim_cur = lim.rlim_max = RLIM_INFINITY;
  if (setrlimit(RLIMIT_FSIZE, &lim) == 0) { /* room again (when the limit may be raised): the rerun resumes */
    o.size = BLOB_SIZE;
    o.sha256 = BLOB_SHA256;
    ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
    assert_blob(dest);
  }
}
END_TEST

/* A server that stalls mid-body: the stall timeout ends that attempt, the
 * retry resumes from the bytes already there. */
START_TEST(stall_then_resume) {
  char *dest = dest_of("stallonce");
  lunet_download_opts o = fast_opts("/stallonce/x/blob.bin", dest);
  o.stall_timeout_s = 1;
  o.stall_bytes_per_s = 1000;
  o.retries = 1;
  o.sha256 = BLOB_SHA256;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  ck_assert_str_eq(log_for("/stallonce/x/blob.bin"), "- 200|bytes=1000- 206");
}
END_TEST

/* kill -9 in the middle of a download, then the same download again: it
 * resumes from the .part the dead process left (and takes its lock). */
START_TEST(kill9_then_rerun_resumes) {
  char *dest = dest_of("kill9");
  lunet_download_opts o = fast_opts("/slow/kill9/blob.bin", dest);
  pid_t child = fork();
  ck_assert_int_ge(child, 0);
  if (child == 0) {
    lunet_ctx *c = lunet_ctx_new();
    lunet_download(c, &o);
    _exit(0);
  }
  /* until a good part of the file is there, then the hard kill */
  for (int i = 0; i < 200 && size_with(dest, ".part") < 20000; i++) usleep(20000);
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  long part = size_with(dest, ".part");
  ck_assert_int_ge(part, 20000);
  ck_assert_int_lt(part, BLOB_SIZE);
  o.url = url_of("/ok/kill9/blob.bin"); /* the same file, now served fast */
  o.sha256 = BLOB_SHA256;
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_OK);
  assert_blob(dest);
  char want[64];
  snprintf(want, sizeof want, "bytes=%ld- 206", part);
  ck_assert_str_eq(log_for("/ok/kill9/blob.bin"), want);
}
END_TEST

START_TEST(file_digests) {
  char path[300], hex[65], md5[33];
  snprintf(path, sizeof path, "%s/blob.bin", srvdir);
  ck_assert_int_eq(lunet_file_sha256(ctx, path, hex), LUNET_OK);
  ck_assert_str_eq(hex, BLOB_SHA256);
  ck_assert_int_eq(lunet_file_md5(ctx, path, md5), LUNET_OK);
  ck_assert_str_eq(md5, BLOB_MD5);
  snprintf(path, sizeof path, "%s/missing.bin", srvdir);
  ck_assert_int_eq(lunet_file_sha256(ctx, path, hex), LUNET_ERR_NOTFOUND);
  char want[400];
  snprintf(want, sizeof want, "%s: cannot open for hashing: No such file or directory", path);
  ck_assert_str_eq(lunet_ctx_error(ctx), want);
}
END_TEST

START_TEST(missing_url_is_an_argument_error) {
  lunet_download_opts o = lunet_download_opts_default();
  o.dest = dest_of("nourl");
  ck_assert_int_eq(lunet_download(ctx, &o), LUNET_ERR_ARG);
  ck_assert_str_eq(lunet_ctx_error(ctx), "download: url and dest are required");
}
END_TEST

int main(void) {
  Suite *s = suite_create("data_download");
  TCase *tc = tcase_create("download");
  tcase_add_unchecked_fixture(tc, start_server, stop_server);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, good_download_with_checksums);
  tcase_add_test(tc, resume_after_truncation);
  tcase_add_test(tc, resume_within_one_call);
  tcase_add_test(tc, server_ignoring_range_restarts);
  tcase_add_test(tc, range_416_restarts);
  tcase_add_test(tc, retry_after_transient_500s);
  tcase_add_test(tc, http_404_names_url_and_code);
  tcase_add_test(tc, http_500_gives_up_after_retries);
  tcase_add_test(tc, mirror_after_dead_url);
  tcase_add_test(tc, all_urls_failing_lists_each);
  tcase_add_test(tc, wrong_checksum_moves_file_aside);
  tcase_add_test(tc, stale_part_is_fetched_again_from_zero);
  tcase_add_test(tc, complete_stale_part_is_fetched_again);
  tcase_add_test(tc, wrong_file_fails_only_after_a_fresh_transfer);
  tcase_add_test(tc, lock_waits_then_keeps_the_finished_file);
  tcase_add_test(tc, concurrent_downloads_take_turns);
  tcase_add_test(tc, vanished_part_is_reported);
  tcase_add_test(tc, stall_times_out);
  tcase_add_test(tc, interrupt_keeps_part);
  tcase_add_test(tc, connection_refused_names_url);
  tcase_add_test(tc, redirect_loop_is_an_error);
  tcase_add_test(tc, content_length_lie_is_caught);
  tcase_add_test(tc, dns_failure_names_the_host);
  tcase_add_test(tc, tls_self_signed_is_refused);
  tcase_add_test(tc, full_disk_keeps_the_part);
  tcase_add_test(tc, stall_then_resume);
  tcase_add_test(tc, kill9_then_rerun_resumes);
  tcase_add_test(tc, file_digests);
  tcase_add_test(tc, missing_url_is_an_argument_error);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
