/* The machine's cost of waking another process and being woken back: two processes pass one
 * byte through two pipes, 100,000 times (docs/execution.md, Cost). Every request in an
 * execution worker pays at least one such round trip.
 *   gcc -O2 -o /tmp/rt benches/pipe_roundtrip.c && /tmp/rt && taskset -c 0 /tmp/rt */
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    int a[2], b[2];
    const int n = 100000;
    char c = 0;
    if (pipe(a) || pipe(b)) return 1;
    if (fork() == 0) {
        for (int i = 0; i < n; i++)
            if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1) _exit(1);
        _exit(0);
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++)
        if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1) return 1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    wait(NULL);
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    printf("pipe round trip between two processes: %.2f us\n", ns / n / 1e3);
    return 0;
}
