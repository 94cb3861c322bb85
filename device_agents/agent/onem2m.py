"""`Dap`: the meter's oneM2M link to its Data Aggregation Point's CSE, over CoAP or MQTT.

    dap = Dap(config)                      # config["transport"]: "coap" or "mqtt"
    await dap.connect()                    # LinkError if the DAP cannot be reached (MQTT;
                                           # over CoAP/UDP the first request finds out)
    ae_id = await dap.register()           # CREATE AE; an existing one (4117/4105) is reused
                                           # and its poa updated; a refusal is a LinkError
    await dap.ensure_container("reading")  # CREATE CNT under the AE: the rsc (4105 is fine)
    await dap.subscribe("command")         # CREATE SUB "cmdsub", nu [ae_id], net [3], pn 2
    rsc = await dap.post("reading", {...}, rqi)  # CREATE CIN: the rsc, or LinkError (keep it
                                           # and send it again with the same rqi)
    dap.on_notify = handler                # handler(primitive) -> rsc, for every NOTIFY
    await dap.serve()                      # the receive loop; returns after close()
    await dap.close()

`primitive` carries op, to, fr, rqi, rvi and pc (decoded). The handler's None counts as 2000,
an exception as 5000; a coroutine it returns runs as a task of its own (answered 2000), since
the link must not wait for the meter's work. Verification requests never reach it.

The meter's AE-ID is "C" + meter_id without characters outside [A-Za-z0-9._-]; its resource
name is meter_id. Every request gets a unique rqi: meter id, a random boot tag, a counter (a
restarted meter must not reuse an rqi: the CSE answers a repeated CREATE rqi from its cache),
except that a message sent again keeps the rqi of its first attempt (`post`).
Content is JSON (compact, via `json`) or CBOR (`ucbor`) as config["serialization"] says;
CREATEs other than the AE's ask for rcn 0, so replies stay small. Only the transport in use is
imported (each costs kilobytes of a board's heap).

Over CoAP the CSE is at coap://dap_host:dap_port (5683) and notifications come to a listener
on config["listen_port"] (0: any); the AE's poa is coap://<poa_host>:<that port>. Over MQTT
the broker is at dap_host:dap_port (1883); requests go to /oneM2M/req/<ae-id>/<cse-id>/<fmt>
(registration on reg_req), responses come back on the matching resp/reg_resp topic,
notifications arrive on /oneM2M/req/<cse-id>/<ae-id>/<fmt> and are answered on
/oneM2M/resp/<cse-id>/<ae-id>/<fmt>; the poa is mqtts://<dap_host>:<dap_port> (8883) with TLS
(config["mqtt_ca"]: the broker's CA certificate), mqtt://...:1883 without. A CBOR meter adds
?ct=cbor to its poa (either transport), so the DAP notifies it in CBOR as well.

Optional config keys (defaults): cse_id "/id-in", cse_name "cse-in", serialization "json",
listen_port 0, listen_host "0.0.0.0", poa_host (the address the DAP sees; 127.0.0.1 on the
unix port), timeout_ms 10000 (MQTT answers; CoAP separate responses), coap_ack_timeout_ms
2000, coap_max_retransmit 4, mqtt_keepalive_s 60, mqtt_username, mqtt_password, mqtt_ca (a
DER file: TLS), mqtt_server_name (dap_host: the name the broker's certificate must carry),
mqtt_tls (true when mqtt_ca is given).
"""

import asyncio
import json

try:
    from . import compat
except ImportError:
    import compat

LinkError = compat.LinkError

const = compat.const
_CREATE = const(1)
_UPDATE = const(3)
_TY_AE = const(2)
_TY_CONTAINER = const(3)
_TY_CONTENT_INSTANCE = const(4)
_TY_SUBSCRIPTION = const(23)
API = "Ngridm2m.meter"
SUBSCRIPTION_NAME = "cmdsub"
_EXISTS = (4105, 4117)  # CONFLICT, ORIGINATOR_HAS_ALREADY_REGISTERED


def ae_id_for(meter_id):
    """'C' + meter_id without characters outside [A-Za-z0-9._-]."""
    kept = [
        c for c in meter_id if "a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "._-"
    ]
    return "C" + "".join(kept)


class Dap:
    """The oneM2M link of one meter (see the module docstring for the contract)."""

    def __init__(self, config):
        self.config = config
        self.meter_id = config["meter_id"]
        self.ae_id = ae_id_for(self.meter_id)
        self.cse_id = config.get("cse_id") or "/id-in"
        self.cse_name = config.get("cse_name") or "cse-in"
        self.ae_path = self.cse_name + "/" + self.meter_id
        self.cbor = config.get("serialization") == "cbor"
        self.timeout_ms = config.get("timeout_ms") or 10000
        self.on_notify = None
        self.notified = 0
        self._tasks = []
        self.registered = False
        self._closing = None
        self._counter = 0
        self._boot = f"{compat.random_bits(24):06x}"
        self._ucbor = compat.ucbor() if self.cbor else None
        # Only the transport in use is imported: each costs kilobytes of a board's heap.
        if config.get("transport", "coap") == "mqtt":
            try:
                from .mqtt import MqttLink
            except ImportError:
                from mqtt import MqttLink
            self._link = MqttLink(self, config)
        else:
            try:
                from .coap import CoapLink
            except ImportError:
                from coap import CoapLink
            self._link = CoapLink(self, config)

    @property
    def poa(self):
        return self._link.poa()

    # ---- the contract ----------------------------------------------------------------------

    async def connect(self):
        self._closing = asyncio.Event()
        await self._link.open()

    async def register(self):
        """CREATE the AE (or reuse the existing one, pointing its poa here); the AE-ID."""
        attributes = {"rn": self.meter_id, "api": API, "rr": True, "srv": ["3"], "poa": [self.poa]}
        reply = await self.request(
            _CREATE, self.cse_name, _TY_AE, {"m2m:ae": attributes}, registration=True
        )
        rsc = reply["rsc"]
        if rsc in _EXISTS:
            # The meter restarted: same AE, but its listener may be on a new port.
            update = {"m2m:ae": {"poa": [self.poa]}}
            await self.request(_UPDATE, self.ae_path, None, update, result_content=0)
        elif rsc != 2001:
            raise LinkError(f"registration of {self.ae_id} refused: rsc {rsc}")
        created = reply.get("pc")
        if isinstance(created, dict) and isinstance(created.get("m2m:ae"), dict):
            self.ae_id = created["m2m:ae"].get("aei") or self.ae_id
        self.registered = True
        return self.ae_id

    async def ensure_container(self, name, attributes=None):
        """CREATE the container `name` under the AE; the rsc (4105: it exists, also fine)."""
        content = {"rn": name}
        if attributes:
            content.update(attributes)
        reply = await self.request(
            _CREATE, self.ae_path, _TY_CONTAINER, {"m2m:cnt": content}, result_content=0
        )
        return reply["rsc"]

    async def subscribe(self, name="command"):
        """CREATE the subscription "cmdsub" on a container: new children, all attributes,
        pn 2 (sendAllPending: the DAP keeps retrying commands while the meter is away)."""
        content = {"rn": SUBSCRIPTION_NAME, "nu": [self.ae_id], "enc": {"net": [3]}, "nct": 1,
                   "pn": 2}  # fmt: skip
        reply = await self.request(
            _CREATE,
            self.ae_path + "/" + name,
            _TY_SUBSCRIPTION,
            {"m2m:sub": content},
            result_content=0,
        )
        return reply["rsc"]

    async def post(self, family, content, request_id=None):
        """CREATE a contentInstance in container `family`; the rsc. LinkError: keep it.

        A message sent again after a LinkError must carry the `request_id` of its first
        attempt: the DAP then answers the retry from its record of the first (over CoAP and
        MQTT) instead of storing the message twice when only the answer was lost."""
        if not self.cbor:
            if isinstance(content, list):  # a long message's text in pieces
                content = compat.jsonparts().Pieces(content)
            elif not isinstance(content, str):
                content = json.dumps(content, separators=(",", ":"))
        elif isinstance(content, list) and content and not isinstance(content[0], str):
            content = self.ucbor().Raw(content)  # stored as CBOR pieces (Agent._enqueue)
        elif isinstance(content, (str, list)):
            content = self._cbor_of_json(content)
        instance = {"m2m:cin": {"cnf": "application/json:0", "con": content}}
        to = self.ae_path + "/" + family
        reply = await self.request(
            _CREATE, to, _TY_CONTENT_INSTANCE, instance, 0, False, request_id
        )
        return reply["rsc"]

    async def serve(self):
        """Receive notifications until close() (MQTT: reconnecting when the link drops)."""
        if self._closing is None:
            raise LinkError("serve() before connect()")
        if not self._closing.is_set():
            await self._link.serve(self._closing)

    async def close(self):
        if self._closing is not None:
            self._closing.set()
        await self._link.close()

    # ---- requests ----------------------------------------------------------------------------

    def next_request_id(self):
        self._counter += 1
        return f"{self.meter_id}-{self._boot}-{self._counter}"

    async def request(
        self,
        operation,
        to,
        resource_type=None,
        content=None,
        result_content=None,
        registration=False,
        request_id=None,
    ):
        """Send one request primitive; the response primitive (rsc, rqi, pc). LinkError."""
        primitive = {
            "op": operation,
            "to": to,
            "fr": self.ae_id,
            "rqi": request_id or self.next_request_id(),
            "rvi": "3",
        }
        if resource_type is not None:
            primitive["ty"] = resource_type
        if content is not None:
            primitive["pc"] = content
        if result_content is not None:
            primitive["rcn"] = result_content
        reply = await self._link.request(primitive, registration)
        rsc = reply.get("rsc")
        if not isinstance(rsc, int) or rsc is True or rsc is False:
            raise LinkError(f"a reply to {primitive['rqi']} without an rsc")
        return reply

    def encode(self, value, cbor=None):
        """Content or a primitive as a list of bytes-like parts (jsonparts / ucbor
        dump_parts): this meter's serialization, or CBOR/JSON."""
        if cbor is None:
            cbor = self.cbor
        return self.ucbor().dump_parts(value) if cbor else compat.jsonparts().dump_parts(value)

    def decode(self, data, cbor=None):
        """ValueError (or UnicodeError) when data is not what it claims to be."""
        if cbor is None:
            cbor = self.cbor
        return self.ucbor().loads(data) if cbor else json.loads(data)

    def _cbor_of_json(self, text):
        """JSON text (as the store keeps a message) as encoded CBOR. Not a coroutine: the
        decoded dicts (5-7 KB for a 2 KB read on a board) are gone before anything is sent."""
        codec = self.ucbor()
        value = json.loads(text if isinstance(text, str) else "".join(text))
        return codec.Raw(codec.dump_parts(value))

    def ucbor(self):
        if self._ucbor is None:
            self._ucbor = compat.ucbor()
        return self._ucbor

    # ---- notifications ------------------------------------------------------------------------

    def notified_with(self, primitive):
        """Run on_notify for one incoming NOTIFY (see the module docstring); the rsc."""
        if not primitive.get("to"):
            primitive["to"] = self.ae_id  # a CoAP NOTIFY to a poa without a path names nobody
        content = primitive.get("pc")
        if isinstance(content, dict):
            signal = content.get("m2m:sgn")
            if isinstance(signal, dict) and signal.get("vrq"):
                return 2000
        self.notified += 1
        handler = self.on_notify
        if handler is None:
            return 2000
        try:
            rsc = handler(primitive)
        except Exception as error:
            print("dap: on_notify failed:", repr(error))
            return 5000
        if rsc is None:
            return 2000
        if not isinstance(rsc, int):
            task = asyncio.create_task(rsc)
            self._tasks.append(task)  # a reference keeps it alive until it is done
            self._tasks = [task for task in self._tasks if not task.done()]
            return 2000
        return rsc
