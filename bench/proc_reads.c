/* What one read of a /proc file costs the kernel, per process, with the cold caches a
 * sampler that runs every few seconds meets (not a test: it reports). Starts N `sleep`
 * processes, keeps each one's file open, and every 500 ms preads all of them once, as
 * corral's GroupSampler does.
 *
 *   cc -O2 -o /tmp/proc_reads bench/proc_reads.c && /tmp/proc_reads [N]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1024;
    pid_t *pid = calloc(n, sizeof *pid);
    int *fd = calloc(n, sizeof *fd);
    static char buf[65536];
    for (int i = 0; i < n; i++) {
        pid[i] = fork();
        if (pid[i] == 0) {
            execlp("sleep", "sleep", "1000", (char *)NULL);
            _exit(127);
        }
    }
    usleep(300000);
    const char *files[] = {"stat", "statm", "task/%d/children"};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < n; i++) {
            char sub[64], path[128];
            snprintf(sub, sizeof sub, files[k], pid[i]);
            snprintf(path, sizeof path, "/proc/%d/%s", pid[i], sub);
            fd[i] = open(path, O_RDONLY);
        }
        double total = 0;
        int rounds = 10;
        for (int r = 0; r < rounds; r++) {
            usleep(500000);
            double t = now();
            for (int i = 0; i < n; i++)
                if (pread(fd[i], buf, sizeof buf, 0) < 0) perror("pread");
            total += now() - t;
        }
        printf("/proc/PID/%-18s %.2f us a read (%d processes, cold)\n", files[k], total / rounds / n * 1e6, n);
        for (int i = 0; i < n; i++) close(fd[i]);
    }
    for (int i = 0; i < n; i++) kill(pid[i], SIGKILL);
    while (wait(NULL) > 0) {}
    return 0;
}
