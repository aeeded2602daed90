# fltemu daemon image: `fltemu serve` as a non-root user, the socket in a shared volume.
#   docker build -t fltemu .
#   docker run -d --name fltemu -v fltemu-sock:/run/fltemu fltemu
# Client containers mount the same volume and set FLTEMU_SOCKET=/run/fltemu/fltemu.sock.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 fltemu \
    && mkdir -p /run/fltemu && chown fltemu:fltemu /run/fltemu

WORKDIR /src
COPY pyproject.toml README.md ./
COPY fltemu ./fltemu
COPY client ./client
RUN pip install --no-cache-dir . && rm -rf /src

USER fltemu
ENV FLTEMU_SOCKET=/run/fltemu/fltemu.sock
VOLUME ["/run/fltemu"]

HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import fltuser; fltuser.connect('\\\\EchoPort').close()"]

# The socket is 0660 so that client containers running as the same group can reach it.
CMD ["fltemu", "serve", "--socket-mode", "660"]
