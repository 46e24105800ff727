# The serving image: protocol stubs, server and client CLI on ONNX Runtime. No torch.
#   docker build -t metalearn .
#   docker run -p 50051:50051 -p 8002:8002 metalearn
FROM python:3.11-slim AS build
WORKDIR /src
COPY protos protos
COPY client client
COPY server server
RUN python -m venv /opt/metalearn \
 && /opt/metalearn/bin/pip install --no-cache-dir ./protos ./client './server[redis]'

FROM python:3.11-slim
COPY --from=build /opt/metalearn /opt/metalearn
RUN useradd --system --uid 10001 --no-create-home metalearn
USER metalearn
ENV PATH=/opt/metalearn/bin:$PATH \
    METALEARN_HOST=[::] \
    METALEARN_PORT=50051 \
    METALEARN_METRICS_PORT=8002
EXPOSE 50051 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s CMD ["metalearn", "--target", "localhost:50051", "--timeout", "2", "health"]
ENTRYPOINT ["metalearn-server"]
