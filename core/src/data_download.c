/*
 * Cached downloads with libcurl: resume into "<dest>.part" with Range
 * requests, retries with exponential backoff over the url and its mirrors,
 * size and checksum checks, then an atomic rename(2) into place.  An
 * flock(2) on "<dest>.lock" keeps two processes sharing a cache from
 * appending to the same .part.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "lunet/data.h"

#define MAX_URLS 33 /* the url and up to 32 mirrors */

/* What the round loop does after one attempt on one url. */
enum outcome {
  DONE,     /* the .part holds a complete transfer */
  RETRY,    /* transient: try this url again in the next round */
  NEXT_URL, /* this url will not work: skip it from now on */
  STOP,     /* give up at once (interrupted, local I/O error) */
  REDO      /* bad bytes that an older .part may have brought: moved aside,
               fetch this url again from byte 0 */
};

/* One transfer's state, shared by the curl callbacks. */
struct xfer {
  lunet_ctx *ctx;
  const lunet_download_opts *o;
  CURL *curl;
  FILE *f;
  const char *label;
  int64_t offset;  /* bytes of the .part this request continues from */
  int64_t written; /* bytes written by this request */
  int64_t total;   /* the whole file's size when known, else -1 */
  bool code_checked, io_error, tty;
  int io_errno; /* errno of the failed write, before curl's calls overwrite it */
  double t_start, t_drawn;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

lunet_download_opts lunet_download_opts_default(void) {
  lunet_download_opts o;
  memset(&o, 0, sizeof o);
  o.retries = 3;
  o.backoff_ms = 1000;
  o.connect_timeout_s = 30;
  o.stall_timeout_s = 30;
  o.stall_bytes_per_s = 1024;
  o.progress = LUNET_PROGRESS_AUTO;
  return o;
}

/* ---- progress ---- */

static char *human_bytes(double b, char *buf, size_t n) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, u++;
  snprintf(buf, n, u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

static char *human_time(double s, char *buf, size_t n) {
  long t = s < 0 ? 0 : (long)(s + 0.5);
  if (t >= 3600)
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

/* One line redrawn in place: label, percent, bar, bytes, speed, ETA. */
static void draw_bar(struct xfer *x, bool final) {
  double el = now_s() - x->t_start;
  double have = (double)(x->offset + x->written);
  double speed = el > 0 ? x->written / el : 0;
  char hb[32], tb[32], sb[32], eb[32];
  human_bytes(have, hb, sizeof hb);
  human_bytes(speed, sb, sizeof sb);
  if (x->total > 0) {
    double frac = have / (double)x->total;
    if (frac > 1) frac = 1;
    char bar[21];
    int fill = (int)(frac * 20);
    for (int i = 0; i < 20; i++) bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
    bar[20] = '\0';
    double eta = speed > 0 ? (x->total - have) / speed : -1;
    fprintf(stderr, "\r%-28.28s %3d%% [%s] %s / %s  %s/s  %s %s\033[K", x->label, (int)(frac * 100),
            bar, hb, human_bytes((double)x->total, tb, sizeof tb), sb, final ? "in" : "ETA",
            final     ? human_time(el, eb, sizeof eb)
            : eta < 0 ? "?"
                      : human_time(eta, eb, sizeof eb));
  } else {
    fprintf(stderr, "\r%-28.28s %s  %s/s  %s\033[K", x->label, hb, sb,
            human_time(el, eb, sizeof eb));
  }
  if (final) fputc('\n', stderr);
  fflush(stderr);
}

static void finish_progress(struct xfer *x, bool ok) {
  if (x->tty && x->o->progress != LUNET_PROGRESS_NONE) {
    if (ok || x->t_drawn > 0) draw_bar(x, true); /* end the line a bar started */
  } else if (ok && x->o->progress == LUNET_PROGRESS_AUTO) {
    double el = now_s() - x->t_start;
    char hb[32], sb[32];
    fprintf(stderr, "%s: %s in %.1f s (%s/s)\n", x->label,
            human_bytes((double)(x->offset + x->written), hb, sizeof hb), el,
            human_bytes(el > 0 ? x->written / el : 0, sb, sizeof sb));
  }
}

/* ---- curl callbacks ---- */

/* The first bytes tell whether the server honoured our Range: a 200 to a
 * ranged request carries the whole file, so the .part starts over. */
static size_t on_write(char *p, size_t size, size_t n, void *ud) {
  struct xfer *x = ud;
  size_t len = size * n;
  if (!x->code_checked) {
    long code = 0;
    curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &code);
    x->code_checked = true;
    if (x->offset > 0 && code == 200) {
      if (fflush(x->f) || ftruncate(fileno(x->f), 0) || fseek(x->f, 0, SEEK_SET)) {
        x->io_error = true;
        x->io_errno = errno;
        return 0;
      }
      x->offset = 0;
    }
  }
  if (fwrite(p, 1, len, x->f) != len) {
    x->io_error = true;
    x->io_errno = errno;
    return 0;
  }
  x->written += (int64_t)len;
  return len;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
  struct xfer *x = ud;
  (void)dlnow, (void)ultotal, (void)ulnow;
  if (lunet_interrupted()) return 1;
  if (x->o->size <= 0 && dltotal > 0 && x->code_checked) x->total = x->offset + dltotal;
  if (x->tty && x->o->progress != LUNET_PROGRESS_NONE) {
    double t = now_s();
    if (t - x->t_drawn >= 0.1) {
      x->t_drawn = t;
      draw_bar(x, false);
    }
  }
  return 0;
}

/* ---- files ---- */

static int64_t file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

/* mkdir -p of the directory part of `path`. */
static lunet_status make_parent_dirs(lunet_ctx *ctx, const char *path) {
  char *dir = strdup(path);
  if (!dir) return lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  char *slash = strrchr(dir, '/');
  lunet_status st = LUNET_OK;
  if (slash && slash != dir) {
    *slash = '\0';
    for (char *p = dir + 1; st == LUNET_OK; p++) {
      if (*p != '/' && *p != '\0') continue;
      char c = *p;
      *p = '\0';
      if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        st = lunet_error(ctx, LUNET_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
      *p = c;
      if (c == '\0') break;
    }
  }
  free(dir);
  return st;
}

static const char *base_name(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

static char *with_suffix(const char *path, const char *suffix) {
  size_t n = strlen(path) + strlen(suffix) + 1;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s%s", path, suffix);
  return s;
}

/* ---- one attempt ---- */

static const char *http_reason(long code) {
  switch (code) {
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 408:
    return "Request Timeout";
  case 410:
    return "Gone";
  case 416:
    return "Range Not Satisfiable";
  case 429:
    return "Too Many Requests";
  case 500:
    return "Internal Server Error";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  default:
    return "HTTP error";
  }
}

/* Turns a failed transfer into a message and a decision. */
static enum outcome classify(struct xfer *x, const char *url, const char *part, CURLcode rc,
                             long code, const char *errbuf) {
  lunet_ctx *ctx = x->ctx;
  if (x->io_error) {
    int e = x->io_errno;
    bool full = e == ENOSPC || e == EFBIG || e == EDQUOT;
    lunet_error(ctx, LUNET_ERR_IO, "cannot write %s: %s%s", part, strerror(e),
                full ? " (the disk is full or a file size limit was reached: make room, or download to another "
                       "folder; the part is kept and the next attempt resumes)"
                     : "");
    return STOP;
  }
  if (rc == CURLE_ABORTED_BY_CALLBACK && lunet_interrupted()) {
    lunet_error(ctx, LUNET_ERR_INTERRUPTED,
                "download of %s interrupted; %s kept (%lld bytes), run again to resume", url, part,
                (long long)file_size(part));
    return STOP;
  }
  const char *detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
  if (rc == CURLE_HTTP_RETURNED_ERROR) {
    lunet_error(ctx, LUNET_ERR_NET, "%s: HTTP %ld (%s)", url, code, http_reason(code));
    bool transient = code >= 500 || code == 408 || code == 429;
    return transient ? RETRY : NEXT_URL;
  }
  if (rc == CURLE_OPERATION_TIMEDOUT && (code != 0 || x->written > 0)) {
    lunet_error(ctx, LUNET_ERR_NET,
                "%s: the transfer stalled (under %d bytes/s for %d s) after %lld bytes: %s", url,
                x->o->stall_bytes_per_s, x->o->stall_timeout_s, (long long)(x->offset + x->written),
                detail);
    return RETRY;
  }
  lunet_error(ctx, LUNET_ERR_NET, "%s: %s", url, detail);
  switch (rc) {
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_URL_MALFORMAT:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_REMOTE_FILE_NOT_FOUND:
  case CURLE_FILE_COULDNT_READ_FILE:
    return NEXT_URL;
  default:
    return RETRY;
  }
}

static CURL *make_handle(struct xfer *x, const char *url, char *errbuf) {
  const lunet_download_opts *o = x->o;
  CURL *c = curl_easy_init();
  if (!c) return NULL;
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "lunet/" LUNET_VERSION_STRING);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)o->connect_timeout_s);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, (long)o->stall_bytes_per_s);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)o->stall_timeout_s);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  return c;
}

/* One request for url into part, continuing what part already holds.  A
 * 416 means our offset lies past the server's file: start over once.
 * *resumed says whether part's bytes did not all come from this url now (a
 * ranged transfer, or no request at all): a checksum mismatch then does not
 * condemn the url. */
static enum outcome fetch(lunet_ctx *ctx, const lunet_download_opts *o, const char *label,
                          const char *url, const char *part, bool *resumed) {
  *resumed = false;
  for (int restart = 0;; restart++) {
    int64_t have = file_size(part);
    if (have < 0) have = 0;
    if (o->size > 0 && have > o->size) {
      remove(part);
      have = 0;
    }
    if (o->size > 0 && have == o->size) {
      *resumed = true;
      return DONE;
    }
    struct xfer x = {.ctx = ctx,
                     .o = o,
                     .label = label,
                     .offset = have,
                     .total = o->size > 0 ? o->size : -1,
                     .tty = isatty(2)};
    x.f = fopen(part, "ab");
    if (!x.f) {
      lunet_error(ctx, LUNET_ERR_IO, "cannot write %s: %s", part, strerror(errno));
      return STOP;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    x.curl = make_handle(&x, url, errbuf);
    if (!x.curl) {
      fclose(x.f);
      lunet_error(ctx, LUNET_ERR_NOMEM, "%s: cannot create a curl handle", url);
      return STOP;
    }
    char range[32];
    if (have > 0) {
      snprintf(range, sizeof range, "%lld-", (long long)have);
      curl_easy_setopt(x.curl, CURLOPT_RANGE, range);
    }
    x.t_start = now_s();
    CURLcode rc = curl_easy_perform(x.curl);
    long code = 0;
    curl_easy_getinfo(x.curl, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(x.curl);
    if (fclose(x.f) != 0 && !x.io_error) {
      x.io_error = true;
      x.io_errno = errno;
    }
    finish_progress(&x, rc == CURLE_OK && !x.io_error);
    *resumed = x.offset > 0; /* on_write zeroes it when a 200 restarted the file */
    if (rc == CURLE_OK && !x.io_error) return DONE;
    if (rc == CURLE_HTTP_RETURNED_ERROR && code == 416 && have > 0 && restart == 0) {
      remove(part);
      continue;
    }
    return classify(&x, url, part, rc, code, errbuf);
  }
}

/* ---- checks after the transfer ---- */

/* Moves part aside to <dest>.corrupt (removes it when that fails) and
 * returns where it went, for messages; the caller frees it. */
static char *move_aside(const lunet_download_opts *o, const char *part) {
  char *bad = with_suffix(o->dest, ".corrupt");
  if (!bad || rename(part, bad) != 0) {
    remove(part);
    free(bad);
    return NULL;
  }
  return bad;
}

/* After a mismatch of a file that was resumed: its older bytes may be the
 * culprit (a stale or foreign .part), so the url gets one fresh try. */
static enum outcome redo_fresh(const lunet_download_opts *o, const char *url, const char *what,
                               const char *bad) {
  if (o->progress != LUNET_PROGRESS_NONE)
    fprintf(stderr,
            "%s: the resumed download of %s %s; moved it to %s, downloading again from the "
            "start\n",
            o->label ? o->label : base_name(o->dest), url, what, bad ? bad : "(nowhere: removed)");
  return REDO;
}

/* Compares one digest; on a mismatch moves part aside to <dest>.corrupt. */
static enum outcome check_digest(lunet_ctx *ctx, const lunet_download_opts *o, const char *url,
                                 const char *part, bool resumed, const char *kind,
                                 const char *expected) {
  if (!expected || !expected[0]) return DONE;
  char hex[65];
  lunet_status st = strcmp(kind, "sha256") == 0 ? lunet_file_sha256(ctx, part, hex)
                                                : lunet_file_md5(ctx, part, hex);
  if (st != LUNET_OK) return STOP;
  if (strcasecmp(hex, expected) == 0) return DONE;
  char *bad = move_aside(o, part);
  lunet_error(ctx, LUNET_ERR_CHECKSUM,
              "%s: checksum mismatch: expected %s %s, got %s; the file was moved to %s "
              "(pass the right checksum, or another url)",
              url, kind, expected, hex, bad ? bad : "(nowhere: removed)");
  enum outcome out = resumed ? redo_fresh(o, url, "failed its checksum", bad) : NEXT_URL;
  free(bad);
  return out;
}

static enum outcome verify(lunet_ctx *ctx, const lunet_download_opts *o, const char *url,
                           const char *part, bool resumed) {
  int64_t got = file_size(part);
  if (got < 0) {
    lunet_error(ctx, LUNET_ERR_IO,
                "%s: %s vanished during the download (removed by another program?); run "
                "again",
                url, part);
    return RETRY;
  }
  if (o->size > 0 && got < o->size) {
    lunet_error(ctx, LUNET_ERR_NET,
                "%s: the server sent %lld of %lld bytes (kept for resume in %s)", url,
                (long long)got, (long long)o->size, part);
    return RETRY;
  }
  if (o->size > 0 && got > o->size) {
    char *bad = move_aside(o, part);
    lunet_error(ctx, LUNET_ERR_CHECKSUM, "%s: got %lld bytes, expected %lld; moved to %s", url,
                (long long)got, (long long)o->size, bad ? bad : "(nowhere: removed)");
    enum outcome out = resumed ? redo_fresh(o, url, "came out too long", bad) : NEXT_URL;
    free(bad);
    return out;
  }
  enum outcome out = check_digest(ctx, o, url, part, resumed, "sha256", o->sha256);
  if (out == DONE) out = check_digest(ctx, o, url, part, resumed, "md5", o->md5);
  return out;
}

/* fetch and verify; a REDO (the .part is gone by then) fetches once more,
 * from byte 0, and only that transfer's mismatch marks the url dead. */
static enum outcome attempt(lunet_ctx *ctx, const lunet_download_opts *o, const char *label,
                            const char *url, const char *part) {
  enum outcome out = REDO;
  for (int pass = 0; pass < 2 && out == REDO; pass++) {
    bool resumed;
    out = fetch(ctx, o, label, url, part, &resumed);
    if (out == DONE) out = verify(ctx, o, url, part, resumed);
  }
  return out == REDO ? NEXT_URL : out; /* REDO twice: the .part could not be removed */
}

/* Sleeps ms milliseconds; false when interrupted meanwhile. */
static bool backoff_sleep(long ms) {
  double end = now_s() + ms / 1000.0;
  while (now_s() < end) {
    if (lunet_interrupted()) return false;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  return !lunet_interrupted();
}

/* The final message: each url's last error (each names its url). */
static lunet_status give_up(lunet_ctx *ctx, int n, char (*last)[512], int attempts) {
  lunet_status st = lunet_ctx_status(ctx);
  char msg[1024];
  size_t k = 0;
  if (n > 1) k = (size_t)snprintf(msg, sizeof msg, "all %d urls failed: ", n);
  for (int i = 0; i < n && k < sizeof msg; i++)
    k += (size_t)snprintf(msg + k, sizeof msg - k, "%s%s", i ? "; " : "", last[i]);
  if (attempts > 1 && k < sizeof msg)
    snprintf(msg + k, sizeof msg - k, " (gave up after %d attempts)", attempts);
  return lunet_error(ctx, st, "%s", msg);
}

/* Rounds over the urls; each url is dropped after a permanent failure. */
static lunet_status download_rounds(lunet_ctx *ctx, const lunet_download_opts *o, const char *part,
                                    const char *const *urls, int n, char (*last)[512], bool *dead) {
  const char *label = o->label ? o->label : base_name(o->dest);
  int attempts = 0;
  for (int round = 0; round <= (o->retries > 0 ? o->retries : 0); round++) {
    if (round > 0 && !backoff_sleep((long)o->backoff_ms << (round - 1 < 20 ? round - 1 : 20)))
      return lunet_error(ctx, LUNET_ERR_INTERRUPTED,
                         "download of %s interrupted; %s kept, run again to resume", o->url, part);
    bool any = false;
    for (int i = 0; i < n; i++) {
      if (dead[i]) continue;
      any = true;
      attempts++;
      enum outcome out = attempt(ctx, o, label, urls[i], part);
      if (out == DONE) {
        if (rename(part, o->dest) != 0)
          return lunet_error(ctx, LUNET_ERR_IO, "cannot rename %s to %s: %s", part, o->dest,
                             strerror(errno));
        lunet_clear_error(ctx); /* earlier attempts' errors are history now */
        return LUNET_OK;
      }
      if (out == STOP) return lunet_ctx_status(ctx);
      snprintf(last[i], 512, "%s", lunet_ctx_error(ctx));
      if (out == NEXT_URL) dead[i] = true;
    }
    if (!any) break;
  }
  return give_up(ctx, n, last, attempts);
}

/* ---- one download at a time per dest ---- */

/* Takes an exclusive flock on lock (created if need be), polling so that
 * Ctrl-C still works while another process holds it.  *fd is the lock's
 * descriptor (closing it unlocks), or -1 where the file system has no
 * flock: then we go on unlocked, as before locks existed. */
static lunet_status take_lock(lunet_ctx *ctx, const lunet_download_opts *o, const char *lock,
                              int *fd) {
  *fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (*fd < 0)
    return lunet_error(ctx, LUNET_ERR_IO,
                       "cannot create the lock file %s: %s (is the folder writable? pass another "
                       "dest)",
                       lock, strerror(errno));
  bool told = false;
  while (flock(*fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) {
      close(*fd);
      *fd = -1;
      return LUNET_OK;
    }
    if (!told && o->progress != LUNET_PROGRESS_NONE) {
      fprintf(stderr, "%s: waiting for another download of %s to finish (%s is locked)\n",
              o->label ? o->label : base_name(o->dest), o->dest, lock);
      told = true;
    }
    if (!backoff_sleep(100)) {
      close(*fd);
      *fd = -1;
      return lunet_error(ctx, LUNET_ERR_INTERRUPTED,
                         "interrupted while waiting for another download of %s (%s is locked)",
                         o->dest, lock);
    }
  }
  return LUNET_OK;
}

/* Whether dest is already there and passes the given checksums (what a
 * process that held the lock before us leaves).  Without a checksum there
 * is nothing to trust, so the caller downloads again. */
static bool dest_is_good(lunet_ctx *ctx, const lunet_download_opts *o) {
  bool has_sha = o->sha256 && o->sha256[0], has_md5 = o->md5 && o->md5[0];
  int64_t got = file_size(o->dest);
  if ((!has_sha && !has_md5) || got < 0 || (o->size > 0 && got != o->size)) return false;
  char hex[65];
  bool ok = true;
  if (has_sha)
    ok = lunet_file_sha256(ctx, o->dest, hex) == LUNET_OK && strcasecmp(hex, o->sha256) == 0;
  if (ok && has_md5)
    ok = lunet_file_md5(ctx, o->dest, hex) == LUNET_OK && strcasecmp(hex, o->md5) == 0;
  lunet_clear_error(ctx); /* a hashing error only means "download it" */
  return ok;
}

/* The locked part of lunet_download. */
static lunet_status download_locked(lunet_ctx *ctx, const lunet_download_opts *o,
                                    const char *const *urls, int n) {
  char *part = with_suffix(o->dest, ".part");
  char *lock = with_suffix(o->dest, ".lock");
  char(*last)[512] = calloc((size_t)n, sizeof *last);
  bool dead[MAX_URLS] = {false};
  int fd = -1;
  lunet_status st;
  /* A file size limit (ulimit -f) raises SIGXFSZ, which kills the process
   * before write() can fail with EFBIG and the part be kept with a message
   * saying what happened: ignored while we write, unless someone handles it. */
  struct sigaction ignore = {.sa_handler = SIG_IGN}, before;
  bool ignoring = sigaction(SIGXFSZ, NULL, &before) == 0 && before.sa_handler == SIG_DFL &&
                  sigaction(SIGXFSZ, &ignore, NULL) == 0;
  if (!part || !lock || !last)
    st = lunet_error(ctx, LUNET_ERR_NOMEM, "out of memory");
  else if ((st = take_lock(ctx, o, lock, &fd)) == LUNET_OK)
    st = dest_is_good(ctx, o) ? LUNET_OK : download_rounds(ctx, o, part, urls, n, last, dead);
  if (ignoring) sigaction(SIGXFSZ, &before, NULL);
  if (fd >= 0) close(fd); /* the lock file stays: removing it would race a waiter */
  free(last);
  free(lock);
  free(part);
  return st;
}

lunet_status lunet_download(lunet_ctx *ctx, const lunet_download_opts *o) {
  if (!o || !o->url || !o->url[0] || !o->dest || !o->dest[0])
    return lunet_error(ctx, LUNET_ERR_ARG, "download: url and dest are required");
  pthread_once(&curl_once, curl_init);
  if (curl_init_rc != CURLE_OK)
    return lunet_error(ctx, LUNET_ERR_NET, "download: libcurl failed to initialise: %s",
                       curl_easy_strerror(curl_init_rc));
  if (make_parent_dirs(ctx, o->dest) != LUNET_OK) return lunet_ctx_status(ctx);
  const char *urls[MAX_URLS];
  int n = 0;
  urls[n++] = o->url;
  for (int i = 0; o->mirrors && o->mirrors[i]; i++) {
    if (n == MAX_URLS)
      return lunet_error(ctx, LUNET_ERR_ARG, "download: at most %d mirrors", MAX_URLS - 1);
    urls[n++] = o->mirrors[i];
  }
  return download_locked(ctx, o, urls, n);
}
