# fltemu: `fltemu serve` as a non-root user, the socket in a volume that client containers
# mount. Build and run:
#   docker build -t fltemu .
#   docker run -d --name fltemu -v fltemu-sock:/run/fltemu fltemu
# Agent containers mount the same volume and set FLTEMU_SOCKET=/run/fltemu/fltemu.sock;
# Windows agents run in the image of Dockerfile.wine (README.md, "In CI").
# A bind mount instead of a volume: the host folder must be writable by the uid the daemon
# runs as (10001 here: `chown 10001 /host/folder`), or run the container as the folder's
# owner (`docker run --user "$(stat -c %u /host/folder)" ...`); otherwise the daemon exits
# with an error that names the folder, its owner and its own uid.
#
# Build arguments:
#   BASE      the image to build on: the official Python image (default), or any Debian 12
#             (bookworm) image, e.g. one made with debootstrap; Debian's own python3 is
#             installed then. Either way fltemu goes into a virtual environment, /opt/fltemu,
#             so Debian's "externally managed" Python (PEP 668) is left alone.
#   PIP_ARGS  extra pip options, e.g. "--no-index --find-links http://127.0.0.1:8000/" to
#             install from a wheelhouse instead of PyPI (with `docker build --network host`).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG PIP_ARGS=""

RUN set -e; \
    if ! python3 -c "import ensurepip" 2>/dev/null; then \
        apt-get update -q; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/fltemu
ENV PATH=/opt/fltemu/bin:$PATH

# A fixed uid/gid, so that client containers can be given the same group if you tighten
# the socket mode below.
RUN groupadd --gid 10001 fltemu \
    && useradd --uid 10001 --gid 10001 --create-home fltemu \
    && mkdir -p /run/fltemu \
    && chown fltemu:fltemu /run/fltemu

WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY fltemu ./fltemu
COPY client ./client
# uvloop is a dependency on Linux; wheels exist for this image, so no compiler is needed.
# The daemon runs no Windows agent: fltemu is installed without its Windows side.
RUN FLTEMU_BUILD_WINDOWS=0 pip install --no-cache-dir $PIP_ARGS . && rm -rf /src

USER fltemu
WORKDIR /home/fltemu
# FLTEMU_TRUST_UID: a client run from this image as another uid (a Python agent, `docker run
# --user 12345 ...`) talks to the daemon of uid 10001; clients trust only their own uid and
# root otherwise.
ENV FLTEMU_SOCKET=/run/fltemu/fltemu.sock FLTEMU_TRUST_UID=10001
VOLUME ["/run/fltemu"]

# Healthy once the daemon answers on its control connection and its filters are set up,
# whatever filters it serves (`fltemu status` exits 0 then). The check runs as the daemon's
# user, the one control commands admit.
HEALTHCHECK --interval=5s --timeout=5s --start-period=5s --retries=5 \
    CMD ["fltemu", "status"]

# Inside a CI network the shared volume is the trust boundary: anyone who can mount it may
# connect, whatever uid its container runs as. To restrict, replace --socket-mode 666
# --allow-everyone with, e.g., --socket-mode 660 --allow-gid 10001 and run the agent
# containers with that group (`docker run --group-add 10001`).
CMD ["fltemu", "serve", "--socket-mode", "666", "--allow-everyone"]
