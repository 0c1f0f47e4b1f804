# The dedup-ledger image: dedupd and dedupctl as static binaries in an otherwise empty image.
# No base image can be pulled here, so the binaries are built on the host first:
#   scripts/build-image.sh        (builds them with crt-static and runs `docker build`)
# The build context is the folder that script assembles (target/image-context).
FROM scratch

# A user and group for the non-root uid the image runs as, and an empty data folder it owns
# (a named volume mounted there starts as a copy of it, ownership included).
COPY --chown=0:0 passwd group /etc/
COPY --chown=65532:65532 data/ /data/
COPY --chown=0:0 dedupd dedupctl /

USER 65532:65532
# gRPC (client, admin, Raft peers) and Prometheus metrics.
EXPOSE 7101 9101
VOLUME ["/data"]
ENTRYPOINT ["/dedupd"]
# Embedded defaults: `docker run IMAGE` serves a single-node ledger. Compose and the Helm chart
# replace these arguments with the cluster's.
CMD ["--node-id=1", "--peers=1=127.0.0.1:7101", "--listen=0.0.0.0:7101", "--data-dir=/data", "--metrics-listen=0.0.0.0:9101"]
