# syntax=docker/dockerfile:1
# blockpull-operator image: multi-stage, Node 24, production dependencies only, non-root.
#
# Every RUN uses the exec form (a JSON argv, no shell): test/e2e/specs/ship/dockerfile.e2e.test.ts
# performs these steps the same way in a clean directory and starts the result.
#
# Base image: node:24-bookworm-slim pinned by its multi-arch index digest (Node 24.18.0 when
# pinned). Bump it with: docker buildx imagetools inspect node:24-bookworm-slim
ARG NODE_IMAGE=node:24-bookworm-slim@sha256:6f7b03f7c2c8e2e784dcf9295400527b9b1270fd37b7e9a7285cf83b6951452d

# --- build: compile TypeScript to dist/ ------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
ENV NODE_ENV=development
COPY package.json package-lock.json ./
RUN ["npm", "ci", "--no-audit", "--no-fund"]
COPY tsconfig.json tsconfig.build.json ./
COPY operator/src ./operator/src
RUN ["npx", "tsc", "-p", "tsconfig.build.json"]

# --- runtime: node + production dependencies + dist/ -----------------------------------------
FROM ${NODE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="blockpull-operator" \
      org.opencontainers.image.description="Kubernetes operator that flattens the disks of running KubeVirt VMs with libvirt block streaming" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/blockpull/blockpull-operator" \
      org.opencontainers.image.base.name="docker.io/library/node:24-bookworm-slim"
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json ./
RUN ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--ignore-scripts"]
RUN ["npm", "cache", "clean", "--force"]
COPY --from=build /src/dist ./dist
# 65532: the conventional "nonroot" uid/gid; numeric so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["node", "dist/operator/src/main.js"]
