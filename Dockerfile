# cronmon exporter image. The embedded Redis is used when no
# CRONMON_REDIS_URL is set; docker-compose.yml runs a separate Redis instead.
FROM python:3.12-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/cronmon cronmon \
    && mkdir -p /var/lib/cronmon && chown cronmon /var/lib/cronmon
COPY config /etc/cronmon
USER cronmon
EXPOSE 9879
VOLUME /var/lib/cronmon
ENTRYPOINT ["cronmon"]
CMD ["serve", "--config", "/etc/cronmon", "--data-dir", "/var/lib/cronmon", "--listen", ":9879"]
