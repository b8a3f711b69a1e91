"""RabbitMQ, behind one module.

Topology (declared by every process that uses it, idempotently):

* exchange ``seriesflow`` (topic, durable): every event, by routing key;
* exchange ``seriesflow.dead`` (direct, durable): dead letters, routed by service name;
* per consuming service: quorum queue ``seriesflow.<service>`` bound to its routing keys,
  with a delivery limit and at-least-once dead-lettering into ``seriesflow.<service>.dead``.

Retry rules, applied by :meth:`Broker.consume`:

==========================  ==============================================================
handler outcome             what happens
==========================  ==============================================================
returns                     ack (the handler's side effects are durable by then)
:class:`TransientError`     wait (exponential backoff), nack and requeue; on the last
(or any other exception)    allowed delivery, dead-letter with the reason instead
:class:`PermanentError`     dead-letter at once with the reason, then ack
malformed message           dead-letter at once (a permanent error): not an event, an
                            unknown ``version``, an unsafe object key (shared/events.py)
==========================  ==============================================================

A dead letter carries ``x-seriesflow-reason``, ``x-seriesflow-error``, ``x-seriesflow-service``
and ``x-seriesflow-routing-key`` headers.

**Dead letters RabbitMQ makes itself.** A consumer that dies on a message every time (killed
by the kernel for memory, SIGKILL) never reaches the table above; RabbitMQ counts the
deliveries and, past the delivery limit, dead-letters the message (``x-death``, reason
``delivery_limit``) with no seriesflow header. A service that passes ``on_dead_letter`` to
:meth:`Broker.consume` also has ``seriesflow.<service>.dead.notices``, bound like the
dead-letter queue, which receives a copy of every dead letter. The consume loop drains it
(at least once a second, between messages): each copy RabbitMQ dead-lettered is handed to
``on_dead_letter(envelope, reason)`` (the stages store and publish ``job.failed``), the
copies seriesflow dead-lettered itself (already reported) are dropped. The dead letter
itself stays in ``seriesflow.<service>.dead`` for replay. A notice whose handler fails
transiently is tried again, up to the delivery limit (then RabbitMQ drops the notice,
never the dead letter). Publishing uses publisher confirms: when
:meth:`Broker.publish` returns, the broker has the message. A lost connection is
re-established with backoff; unacknowledged messages are redelivered by RabbitMQ.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

from shared.errors import PermanentError, SeriesflowError, TransientError
from shared.events import EXCHANGE, Envelope
from shared.logs import get_logger
from shared.metrics import Metrics
from shared.settings import ServiceSettings

DEAD_LETTER_EXCHANGE = "seriesflow.dead"
_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.StreamLostError,
    ConnectionError,
)
log = get_logger("broker")
T = TypeVar("T")

SERVICE_POLL_SECONDS = 1.0
"""How long :meth:`Broker.run_alongside` waits for the connection's I/O at a time while a
handler works (heartbeats need one turn every few seconds; the work's end wakes it)."""


def _nothing() -> None:
    """A callback that only wakes the connection's thread."""


def queue_name(service: str) -> str:
    return f"seriesflow.{service}"


def dead_letter_queue(service: str) -> str:
    return f"seriesflow.{service}.dead"


def notices_queue(service: str) -> str:
    return f"seriesflow.{service}.dead.notices"


def rabbitmq_dead_letter_reason(headers: dict[str, Any], limit: int) -> str | None:
    """Why RabbitMQ dead-lettered a message; None if seriesflow dead-lettered it itself."""
    if "x-seriesflow-reason" in headers:
        return None
    why = headers.get("x-first-death-reason")
    if isinstance(why, bytes):
        why = why.decode("utf-8", "replace")
    if why is None:
        deaths = headers.get("x-death") or [{}]
        why = deaths[0].get("reason") if isinstance(deaths[0], dict) else None
    if why == "delivery_limit":
        return (
            f"given up after {limit + 1} deliveries without an answer (delivery limit): the "
            "consumer stopped each time before acknowledging, e.g. killed or out of memory"
        )
    return f"dead-lettered by RabbitMQ ({why or 'unknown reason'})"


@dataclass(frozen=True)
class Delivery:
    """What a handler learns about the message beyond its envelope."""

    routing_key: str
    delivery_count: int  # 0 on first delivery
    redelivered: bool


Handler = Callable[[Envelope, Delivery], None]
DeadLetterHandler = Callable[[Envelope, str], None]
"""``on_dead_letter(envelope, reason)``: a message RabbitMQ dead-lettered (module docstring)."""
_NOTICE_INTERVAL = 1.0


@dataclass(frozen=True)
class QueueStats:
    queue: str
    messages: int
    consumers: int
    dead_letters: int


class Broker:
    """One connection and channel to RabbitMQ, for publishing and consuming."""

    def __init__(
        self, settings: ServiceSettings, producer: str, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.metrics = metrics or Metrics(producer)  # counts go nowhere unless served
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    # -- connection -------------------------------------------------------------------

    def connect(self, attempts: int | None = None) -> None:
        """Connect (retrying with backoff) and declare the exchanges."""
        params = pika.URLParameters(self.settings.amqp_url.get_secret_value())
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        delay = self.settings.retry_backoff_seconds or 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                self._connection = pika.BlockingConnection(params)
                break
            except _CONNECTION_ERRORS as exc:
                self.metrics.broker_error("unreachable")
                if attempts is not None and attempt >= attempts:
                    raise TransientError(f"cannot reach RabbitMQ: {type(exc).__name__}") from exc
                log.warning("broker unreachable, retrying", extra={"in_seconds": delay})
                time.sleep(delay)
                delay = min(delay * 2, self.settings.retry_backoff_max_seconds or 30.0)
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        self._channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        self._channel.exchange_declare(DEAD_LETTER_EXCHANGE, exchange_type="direct", durable=True)

    @property
    def channel(self) -> BlockingChannel:
        if self._channel is None or self._channel.is_closed:
            self.connect()
        assert self._channel is not None
        return self._channel

    def close(self) -> None:
        try:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
        except _CONNECTION_ERRORS:
            pass
        self._connection = None
        self._channel = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()

    def run_alongside(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a worker thread while this thread services the connection.

        A handler doing long work (a conversion, an export) would otherwise starve the
        connection's heartbeats; RabbitMQ would close it and redeliver the message while
        the first delivery is still being worked on.

        The worker wakes this thread when the work ends (a callback queued on the
        connection), so the result is taken at once rather than at the next poll; between
        events this thread sleeps up to :data:`SERVICE_POLL_SECONDS`.
        """
        connection = self._connection
        if connection is None or not connection.is_open:
            return work()
        context = contextvars.copy_context()  # keeps the job's log context

        def wake(_: object) -> None:
            with contextlib.suppress(*_CONNECTION_ERRORS):  # closed: the loop below raises
                connection.add_callback_threadsafe(_nothing)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.producer}-work") as pool:
            future = pool.submit(context.run, work)
            future.add_done_callback(wake)
            try:
                while not future.done():
                    connection.process_data_events(time_limit=SERVICE_POLL_SECONDS)
            except BaseException:
                wait([future])  # let the work end (and clean up) before giving up
                raise
            return future.result()

    # -- topology ---------------------------------------------------------------------

    def declare_service_queue(
        self, service: str, bindings: Iterable[str], *, notices: bool = False
    ) -> str:
        """The service's quorum queue, its dead-letter queue (and notices), its bindings."""
        channel = self.channel
        dead = dead_letter_queue(service)
        channel.queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(dead, DEAD_LETTER_EXCHANGE, routing_key=service)
        if notices:
            channel.queue_declare(
                notices_queue(service),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-delivery-limit": self.settings.delivery_limit,
                },
            )
            channel.queue_bind(notices_queue(service), DEAD_LETTER_EXCHANGE, routing_key=service)
        queue = queue_name(service)
        channel.queue_declare(
            queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": self.settings.delivery_limit,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "x-dead-letter-routing-key": service,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        for key in bindings:
            channel.queue_bind(queue, EXCHANGE, routing_key=key)
        return queue

    def stats(self, service: str) -> QueueStats:
        """Depth and consumers of a service's queue, and its dead letters."""
        channel = self.channel
        main = channel.queue_declare(queue_name(service), passive=True)
        dead = channel.queue_declare(dead_letter_queue(service), passive=True)
        return QueueStats(
            queue=queue_name(service),
            messages=main.method.message_count,
            consumers=main.method.consumer_count,
            dead_letters=dead.method.message_count,
        )

    # -- publishing -------------------------------------------------------------------

    def publish(self, envelope: Envelope, headers: dict[str, Any] | None = None) -> None:
        """Publish with confirmation; raises TransientError if the broker did not take it."""
        self._publish(EXCHANGE, envelope.routing_key, envelope.to_bytes(), envelope, headers)
        self.metrics.published(envelope.type)

    def _publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        envelope: Envelope | None,
        headers: dict[str, Any] | None,
    ) -> None:
        properties = BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=envelope.event_id if envelope else None,
            correlation_id=envelope.correlation_id if envelope else None,
            type=envelope.type if envelope else None,
            app_id=self.producer,
            headers=headers or {},
        )
        try:
            self.channel.basic_publish(exchange, routing_key, body, properties)
        except pika.exceptions.NackError as exc:
            self.metrics.broker_error("refused")
            raise TransientError("RabbitMQ refused the message (nack)") from exc
        except pika.exceptions.UnroutableError as exc:
            self.metrics.broker_error("unroutable")
            raise TransientError("RabbitMQ could not route the message") from exc
        except _CONNECTION_ERRORS as exc:
            self.metrics.broker_error("connection_lost")
            self.close()
            raise TransientError(f"lost RabbitMQ while publishing: {type(exc).__name__}") from exc

    # -- consuming --------------------------------------------------------------------

    def consume(
        self,
        service: str,
        bindings: Iterable[str],
        handler: Handler,
        stop: threading.Event | None = None,
        prefetch: int = 1,
        on_dead_letter: DeadLetterHandler | None = None,
    ) -> None:
        """Run ``handler`` on every message of the service's queue until ``stop`` is set,
        and ``on_dead_letter`` on each message RabbitMQ dead-letters (module docstring).

        Reconnects after a lost connection; never returns because of one.
        """
        stop = stop or threading.Event()
        bindings = list(bindings)
        delay = self.settings.retry_backoff_seconds or 0.5
        notices = on_dead_letter is not None
        while not stop.is_set():
            try:
                queue = self.declare_service_queue(service, bindings, notices=notices)
                channel = self.channel
                channel.basic_qos(prefetch_count=prefetch)
                noticed = 0.0
                for method, properties, body in channel.consume(queue, inactivity_timeout=0.5):
                    if stop.is_set():
                        break
                    if (
                        on_dead_letter is not None
                        and time.monotonic() - noticed >= _NOTICE_INTERVAL
                    ):
                        self._notice_dead_letters(service, on_dead_letter)
                        noticed = time.monotonic()
                    if method is None:
                        continue
                    self._handle(service, handler, method, properties, body)
                    delay = self.settings.retry_backoff_seconds or 0.5
                if self._channel is not None and self._channel.is_open:
                    self._channel.cancel()
            except _CONNECTION_ERRORS as exc:
                self.metrics.broker_error("connection_lost")
                self.close()
                if stop.is_set():
                    break
                log.warning(
                    "lost RabbitMQ, reconnecting",
                    extra={"error": type(exc).__name__, "in_seconds": delay},
                )
                stop.wait(delay)
                delay = min(delay * 2, self.settings.retry_backoff_max_seconds or 30.0)

    def _handle(
        self,
        service: str,
        handler: Handler,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
    ) -> None:
        channel = self.channel
        tag = method.delivery_tag
        count = int((properties.headers or {}).get("x-delivery-count", 0) or 0)
        delivery = Delivery(method.routing_key, count, bool(method.redelivered))
        try:
            envelope = Envelope.from_bytes(body)
            handler(envelope, delivery)
        except PermanentError as exc:
            self._dead_letter(service, method, properties, body, exc)
            channel.basic_ack(tag)
            return
        except _CONNECTION_ERRORS:
            raise
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, SeriesflowError)
                else TransientError(f"{type(exc).__name__}: {exc}")
            )
            if count + 1 >= self.settings.delivery_limit:
                self._dead_letter(service, method, properties, body, error)
                channel.basic_ack(tag)
                return
            wait = min(
                (self.settings.retry_backoff_seconds or 0.0) * 2**count,
                self.settings.retry_backoff_max_seconds,
            )
            log.warning(
                "transient failure, will retry",
                extra={"service": service, "reason": error.reason, "attempt": count + 1},
            )
            if wait and self._connection is not None:
                self._connection.sleep(wait)
            self.metrics.retried()
            channel.basic_nack(tag, requeue=True)
            return
        channel.basic_ack(tag)

    def _notice_dead_letters(self, service: str, on_dead_letter: DeadLetterHandler) -> None:
        """Hand the messages RabbitMQ dead-lettered to ``on_dead_letter``; drop the others."""
        channel = self.channel
        while True:
            method, properties, body = channel.basic_get(notices_queue(service))
            if method is None:
                return
            reason = rabbitmq_dead_letter_reason(
                dict(properties.headers or {}), self.settings.delivery_limit
            )
            if reason is not None:
                try:
                    envelope = Envelope.from_bytes(body)
                except PermanentError:  # not an event: nothing to report it for
                    envelope = None
                log.error(
                    "message dead-lettered by RabbitMQ",
                    extra={
                        "service": service,
                        "reason": reason,
                        "job": envelope.job_id if envelope is not None else None,
                    },
                )
                if envelope is not None:
                    try:
                        on_dead_letter(envelope, reason)
                    except _CONNECTION_ERRORS:
                        raise
                    except PermanentError as exc:
                        log.error("dead letter not reported", extra={"reason": exc.reason})
                    except Exception as exc:
                        log.warning(
                            "dead letter not reported yet, will retry",
                            extra={"error": type(exc).__name__},
                        )
                        channel.basic_nack(method.delivery_tag, requeue=True)
                        return
                self.metrics.dead_lettered("rabbitmq")
            channel.basic_ack(method.delivery_tag)

    def _dead_letter(
        self,
        service: str,
        method: Basic.Deliver,
        properties: BasicProperties,
        body: bytes,
        error: BaseException,
    ) -> None:
        reason = error.reason if isinstance(error, SeriesflowError) else str(error)
        headers = dict(properties.headers or {})
        headers.update(
            {
                "x-seriesflow-reason": reason[:1000],
                "x-seriesflow-error": type(error).__name__,
                "x-seriesflow-service": service,
                "x-seriesflow-routing-key": method.routing_key,
            }
        )
        log.error(
            "message dead-lettered",
            extra={"service": service, "reason": reason, "error": type(error).__name__},
        )
        self._publish(DEAD_LETTER_EXCHANGE, service, body, None, headers)
        self.metrics.dead_lettered("seriesflow")

    # -- replay -----------------------------------------------------------------------

    def replay_dead_letters(self, service: str, limit: int | None = None) -> int:
        """Re-publish a service's dead letters to their original routing keys.

        A dead-letter queue that was never declared (the service never ran against this
        broker) holds nothing: that is 0 replayed, not an error.
        """
        try:
            self.channel.queue_declare(dead_letter_queue(service), passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise TransientError(f"dead letters of {service}: {exc.reply_text}") from exc
            log.info("no dead-letter queue: nothing to replay", extra={"service": service})
            return 0
        channel = self.channel
        done = 0
        while limit is None or done < limit:
            method, properties, body = channel.basic_get(dead_letter_queue(service))
            if method is None:
                break
            headers = dict(properties.headers or {})
            routing_key = headers.get("x-seriesflow-routing-key") or _death_routing_key(headers)
            if not routing_key:
                channel.basic_nack(method.delivery_tag, requeue=True)
                break
            for key in [
                k for k in headers if k.startswith("x-seriesflow-") or k.startswith("x-death")
            ]:
                headers.pop(key)
            headers["x-seriesflow-replayed"] = True
            self._publish(EXCHANGE, str(routing_key), body, None, headers)
            channel.basic_ack(method.delivery_tag)
            done += 1
        return done


def _death_routing_key(headers: dict[str, Any]) -> str | None:
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths, list):
        keys = deaths[0].get("routing-keys") or []
        return str(keys[0]) if keys else None
    return None
