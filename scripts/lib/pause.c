/* The pod sandbox's only process (the "pause" container): holds the pod's namespaces,
 * reaps orphaned children and exits on SIGINT or SIGTERM. Built statically by
 * scripts/install-kube-node.sh. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction stop_action = {.sa_handler = stop}, reap_action = {.sa_handler = reap,
                                                                         .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGINT, &stop_action, NULL);
    sigaction(SIGTERM, &stop_action, NULL);
    sigaction(SIGCHLD, &reap_action, NULL);
    for (;;)
        pause();
    return 1;
}
