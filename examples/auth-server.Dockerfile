# The demo's auth server (examples/auth-server.js) as an image, built from this repository (the build
# context is its root: see docker-compose.yml). The first stage compiles the addon; the second holds
# Node.js, the package, express, express-session and the example, and runs as an unprivileged user.
FROM node:22-bookworm AS build
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN npm ci --no-audit --no-fund --ignore-scripts && npm run build

FROM node:22-bookworm-slim
WORKDIR /app
RUN npm install --no-audit --no-fund --no-package-lock express@5 express-session@1 && rm package.json
COPY --from=build /src/package.json /src/index.js /src/native.js ./
COPY --from=build /src/lib ./lib
COPY --from=build /src/peer-buckets.*.node ./
COPY --from=build /src/examples/auth-server.js ./examples/
USER node
ENV AUTH_HTTP=0.0.0.0:3000 AUTH_PEER=0.0.0.0:7070
EXPOSE 3000 7070
# node itself is PID 1, so the SIGTERM of `docker stop` (or Kubernetes) reaches the server's handler.
CMD ["node", "examples/auth-server.js"]
