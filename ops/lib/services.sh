# Shared by ops/demo and ops/test: start the local Kafka and Redis unless the environment
# points leadflow at other ones (LEADFLOW_KAFKA_BOOTSTRAP / LEADFLOW_REDIS_URL).
is_local_kafka() {
  case "${LEADFLOW_KAFKA_BOOTSTRAP:-127.0.0.1:9092}" in
    127.0.0.1:9092 | localhost:9092) return 0 ;;
    *) return 1 ;;
  esac
}
is_local_redis() {
  case "${LEADFLOW_REDIS_URL:-redis://127.0.0.1:6379/0}" in
    redis://127.0.0.1:6379* | redis://localhost:6379*) return 0 ;;
    *) return 1 ;;
  esac
}
# The Redis URL as it may be shown: without its password (redis://user:***@host:6379/0).
redacted_redis_url() {
  printf '%s' "$LEADFLOW_REDIS_URL" | sed -E 's#^([a-z]+://[^:/@]*):[^/]*@#\1:***@#; s#([?&]password=)[^&]*#\1***#'
}
start_local_services() {
  local ops_dir="$1"
  if is_local_kafka; then "$ops_dir/stack" up kafka; else echo "using Kafka at $LEADFLOW_KAFKA_BOOTSTRAP" >&2; fi
  if is_local_redis; then "$ops_dir/stack" up redis; else echo "using Redis at $(redacted_redis_url)" >&2; fi
}
