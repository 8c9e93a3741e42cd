/* rsrc-http SOCKET PATH: GET PATH over HTTP/1.0 on a Unix socket and write
 * the whole response (status line, headers, body) to stdout. L1 has no curl;
 * this is the test suite's client for the VMM's --api-sock. Built static. */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    char buf[65536];
    ssize_t n;
    int fd;

    if (argc != 3 || strlen(argv[1]) >= sizeof a.sun_path) {
        fprintf(stderr, "usage: rsrc-http SOCKET PATH\n");
        return 2;
    }
    strcpy(a.sun_path, argv[1]);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror(argv[1]);
        return 1;
    }
    n = snprintf(buf, sizeof buf, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", argv[2]);
    if (write(fd, buf, (size_t)n) != n) {
        perror("write");
        return 1;
    }
    while ((n = read(fd, buf, sizeof buf)) > 0)
        if (fwrite(buf, 1, (size_t)n, stdout) != (size_t)n)
            return 1;
    return n < 0;
}
