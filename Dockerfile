# Errorbook image: the same install as the README (CPU build of torch by default).
FROM python:3.11-slim
WORKDIR /srv/errorbook
COPY . .
RUN pip install --no-cache-dir -e .
ENV ERRORBOOK_DATA_DIR=/data
EXPOSE 8000
CMD ["errorbook", "serve", "--host", "0.0.0.0"]
