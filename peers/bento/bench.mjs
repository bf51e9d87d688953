// BentoCache side of the cachenode peer benchmarks.
//
// Driven by `peers/src/bento.rs`, which runs one mode per process and reads
// one JSON object from stdout (nothing else is ever written to stdout):
//
//   node bench.mjs hit         <redis_url> <ops>
//     -> {"ram_hit_ns": f64, "redis_hit_us": [f64], "set_us": [f64]}
//   node bench.mjs propagation <redis_url> <receivers> <rate> <seconds>
//     -> {"delays_us": [f64], "sent": u64, "observed": u64, "bus_check": {...}, ...}
//   node bench.mjs check       <redis_url>
//     -> {"bus_check": {...}}
//
// Every BentoCache instance is what one service process would hold: a
// multi-tier store with a memory L1, a Redis L2 and a Redis bus, and its own
// Redis connections (one for L2, plus the two the bus opens: publisher and
// subscriber). All instances of one run share a prefix unique to the run, so
// they see each other's keys and bus messages and nothing of any other run.
//
// The methodology mirrors the Rust harness: medians of timed batches for the
// RAM hit, one timed call per operation for Redis hits and sets, and for
// propagation a paced sender whose invalidations are timed from just before
// `delete` to the moment each receiver's `get` stops returning the old value.

import { performance } from 'node:perf_hooks'
import { setImmediate as yieldToEventLoop, setTimeout as sleep } from 'node:timers/promises'

import { BentoCache, bentostore } from 'bentocache'
import { memoryDriver } from 'bentocache/drivers/memory'
import { redisBusDriver, redisDriver } from 'bentocache/drivers/redis'
import { Redis } from 'ioredis'

/** The store name. BentoCache's bus channel is `bentocache.notifications:<store>`. */
const STORE = 'multitier'

/**
 * Time to live of every entry (5 min): long enough that nothing expires during
 * a run. In milliseconds rather than '5m': BentoCache rebuilds its entry
 * options on every call and would parse the string each time.
 */
const TTL_MS = 5 * 60 * 1_000

/** Number of timed batches of the RAM-hit loop; the result is their median. */
const RAM_HIT_BATCHES = 10

/** Upper bound on the distinct keys of the Redis-hit and set measurements. */
const MAX_DISTINCT_KEYS = 2_000

/** How long receivers keep polling after the sender's last invalidation. */
const OBSERVE_GRACE_MS = 5_000

/** How long the bus check waits for a receiver to drop its L1 entry. */
const BUS_CHECK_TIMEOUT_MS = 2_000

/** How long to wait for every instance's bus subscription to be live. */
const SUBSCRIBE_TIMEOUT_MS = 10_000

/** Sets in flight at once while pre-populating the propagation keys. */
const PREPOPULATE_CONCURRENCY = 32

/** A prefix no other run shares: keys live under `<prefix>:`, bus messages carry it. */
const RUN_PREFIX = `peers-bento-${process.pid}-${Date.now().toString(36)}`

/** The value every system reads and writes; same shape as the Rust `Item`. */
function item(version) {
  return {
    version,
    name: `item-${String(version % 1_000_000).padStart(6, '0')}`,
    score: version * 0.5,
  }
}

/**
 * One BentoCache instance with its own Redis connections.
 *
 * - `grace: false`: no stale-while-error serving; an invalidated entry is gone.
 *   (It is BentoCache's default; set here so the comparison does not depend on it.)
 * - `suppressL2Errors: false`: with an L1 present BentoCache swallows Redis
 *   errors by default and reports a miss, which the propagation poller would
 *   count as an observed invalidation. Errors must surface instead.
 * - The memory driver keeps its default `serialize: true`: L1 holds the JSON
 *   string and every L1 hit parses it (a fresh object per get).
 */
function instance(redisUrl, l1MaxItems) {
  const connection = new Redis(redisUrl)
  const bento = new BentoCache({
    default: STORE,
    prefix: RUN_PREFIX,
    ttl: TTL_MS,
    grace: false,
    suppressL2Errors: false,
    stores: {
      [STORE]: bentostore()
        .useL1Layer(memoryDriver({ maxItems: l1MaxItems }))
        .useL2Layer(redisDriver({ connection }))
        // The bus duplicates the connection: one publisher, one subscriber.
        .useBus(redisBusDriver({ connection })),
    },
  })
  // BentoCache builds the store (and subscribes its bus) on first use; do it
  // now so that subscription starts before anything is measured.
  bento.use()
  return bento
}

/**
 * The script's own connection, for checks and clean-up. It connects before
 * anything else and does not retry, so an unreachable server fails the run at
 * once instead of after ioredis's reconnection attempts.
 */
async function connectAdmin(redisUrl) {
  const admin = new Redis(redisUrl, { lazyConnect: true, retryStrategy: () => null })
  // The socket error (e.g. ECONNREFUSED) says more than the failed command.
  let socketError
  admin.on('error', (error) => (socketError = error))
  try {
    await admin.connect()
    await admin.ping()
  } catch (error) {
    admin.disconnect()
    throw new Error(`cannot reach Redis: ${(socketError ?? error).message}`)
  }
  return admin
}

/** How many connections subscribe to the bus channel (of any run on this server). */
async function busSubscribers(admin) {
  const [, count] = await admin.pubsub('NUMSUB', `bentocache.notifications:${STORE}`)
  return Number(count)
}

/**
 * Waits until `expected` subscribers listen on the bus channel: those present
 * before this run's instances existed plus one per instance.
 * BentoCache subscribes in the background and offers no way to await it; a
 * deletion published before a receiver has subscribed would never reach it.
 */
async function waitForSubscribers(admin, expected) {
  const deadline = performance.now() + SUBSCRIBE_TIMEOUT_MS
  for (;;) {
    const count = await busSubscribers(admin)
    if (count >= expected) return
    if (performance.now() > deadline) {
      throw new Error(`only ${count} of ${expected} bus subscriptions on bentocache.notifications:${STORE} after ${SUBSCRIBE_TIMEOUT_MS} ms`)
    }
    await sleep(10)
  }
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

function elapsedUs(startNs) {
  return Number(process.hrtime.bigint() - startNs) / 1_000
}

async function closeAll(bentos, admin) {
  await Promise.allSettled(bentos.map((bento) => bento.disconnectAll()))
  await admin?.quit().catch(() => admin.disconnect())
}

/** Deletes every key of the run from Redis (SCAN + UNLINK under the prefix). */
async function dropRunKeys(admin) {
  let cursor = '0'
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', `${RUN_PREFIX}:*`, 'COUNT', 1000)
    if (keys.length) await admin.unlink(...keys)
    cursor = next
  } while (cursor !== '0')
}

// ---------------------------------------------------------------------------
// hit: RAM hit, Redis hit with a cold RAM layer, set
// ---------------------------------------------------------------------------

async function hit(redisUrl, ops) {
  const distinct = Math.max(1, Math.min(MAX_DISTINCT_KEYS, Math.floor(ops / 10)))
  const admin = await connectAdmin(redisUrl)
  const writer = instance(redisUrl, distinct + 1_024)
  const bentos = [writer]
  try {
    // (a) RAM hit: one key, read in a loop from the writer's own L1.
    const ramKey = 'hit:ram'
    await writer.set({ key: ramKey, value: item(1) })
    const perBatch = Math.max(1, Math.ceil(ops / RAM_HIT_BATCHES))
    const readBatch = async () => {
      let last
      for (let i = 0; i < perBatch; i++) last = await writer.get({ key: ramKey })
      if (last?.version !== 1) throw new Error(`RAM hit returned ${JSON.stringify(last)}`)
    }
    await readBatch() // warm-up (JIT), not timed
    const batchNs = []
    for (let b = 0; b < RAM_HIT_BATCHES; b++) {
      const start = process.hrtime.bigint()
      await readBatch()
      batchNs.push(Number(process.hrtime.bigint() - start) / perBatch)
    }

    // (c) set: the writer writes `distinct` keys, one timed call each
    // (L1 write, Redis SET, bus publication of the write).
    const setUs = []
    for (let i = 0; i < distinct; i++) {
      const value = item(i)
      const start = process.hrtime.bigint()
      await writer.set({ key: `hit:k:${i}`, value })
      setUs.push(elapsedUs(start))
    }

    // (b) Redis hit: a fresh instance, created after the writes so its L1 is
    // cold, reads each key once (Redis GET + JSON parse + L1 fill).
    const reader = instance(redisUrl, distinct + 1_024)
    bentos.push(reader)
    await reader.get({ key: 'hit:warm-up' }) // connects; a miss, not timed
    const redisHitUs = []
    for (let i = 0; i < distinct; i++) {
      const start = process.hrtime.bigint()
      const value = await reader.get({ key: `hit:k:${i}` })
      redisHitUs.push(elapsedUs(start))
      if (value?.version !== i) throw new Error(`Redis hit of hit:k:${i} returned ${JSON.stringify(value)}`)
    }

    await dropRunKeys(admin)
    return { ram_hit_ns: median(batchNs), redis_hit_us: redisHitUs, set_us: setUs }
  } finally {
    await closeAll(bentos, admin)
  }
}

// ---------------------------------------------------------------------------
// Bus check: does a delete on one instance drop the key from another's L1?
// ---------------------------------------------------------------------------

/**
 * For each receiver: the sender writes a key, the receiver reads it into its
 * L1; the key is then removed from Redis behind BentoCache's back, and the
 * receiver must still return it (proof it is served from L1). The sender then
 * calls `delete`; the receiver must return `undefined` within
 * BUS_CHECK_TIMEOUT_MS, which only the bus message can cause.
 */
async function busCheck(sender, receivers, admin) {
  const key = 'check:bus'
  await sender.set({ key, value: item(1), skipBusNotify: true })
  const servedFromL1 = []
  for (const receiver of receivers) {
    const value = await receiver.get({ key })
    if (value?.version !== 1) throw new Error(`bus check: receiver read ${JSON.stringify(value)} from Redis`)
  }
  await admin.unlink(`${RUN_PREFIX}:${key}`)
  for (const receiver of receivers) {
    servedFromL1.push((await receiver.get({ key }))?.version === 1)
  }

  const t0 = performance.now()
  await sender.delete({ key })
  const droppedAfterUs = await Promise.all(
    receivers.map(async (receiver) => {
      while (performance.now() - t0 < BUS_CHECK_TIMEOUT_MS) {
        if ((await receiver.get({ key })) === undefined) return (performance.now() - t0) * 1_000
        await sleep(1)
      }
      return null
    }),
  )
  const result = {
    receivers: receivers.length,
    served_from_l1: servedFromL1.filter(Boolean).length,
    dropped_by_bus: droppedAfterUs.filter((us) => us !== null).length,
    dropped_after_us: droppedAfterUs,
  }
  if (result.served_from_l1 !== receivers.length || result.dropped_by_bus !== receivers.length) {
    process.stderr.write(`bento bus check failed: ${JSON.stringify(result)}\n`)
  }
  return result
}

async function check(redisUrl) {
  const admin = await connectAdmin(redisUrl)
  const baseline = await busSubscribers(admin)
  const sender = instance(redisUrl, 1_024)
  const receiver = instance(redisUrl, 1_024)
  try {
    await waitForSubscribers(admin, baseline + 2)
    return { bus_check: await busCheck(sender, [receiver], admin) }
  } finally {
    await dropRunKeys(admin).catch(() => {})
    await closeAll([sender, receiver], admin)
  }
}

// ---------------------------------------------------------------------------
// propagation: one sender, N receivers, paced deletes
// ---------------------------------------------------------------------------

async function propagation(redisUrl, receiverCount, rate, seconds) {
  const count = Math.max(1, Math.round(rate * seconds))
  const keys = Array.from({ length: count }, (_, i) => `p:${i}`)
  const l1MaxItems = count + 1_024 // every pre-populated key stays in L1

  const admin = await connectAdmin(redisUrl)
  const baseline = await busSubscribers(admin)
  const sender = instance(redisUrl, l1MaxItems)
  const receivers = Array.from({ length: receiverCount }, () => instance(redisUrl, l1MaxItems))
  const bentos = [sender, ...receivers]
  try {
    await waitForSubscribers(admin, baseline + bentos.length)
    const busCheckResult = await busCheck(sender, receivers, admin)

    // Pre-populate: version 1 of every key, then every receiver reads each
    // once so it sits in its L1. The writes skip the bus: a "set" message
    // arriving after a receiver's read would mark its L1 entry expired and
    // the measurement would then time Redis, not the bus.
    await inParallel(keys, (key) => sender.set({ key, value: item(1), skipBusNotify: true }))
    for (const receiver of receivers) {
      await inParallel(keys, async (key) => {
        const value = await receiver.get({ key })
        if (value?.version !== 1) throw new Error(`pre-populate: ${key} read ${JSON.stringify(value)}`)
      })
    }

    // Each receiver's keys still to be seen gone, as [key, t0] pairs.
    const pending = receivers.map(() => [])
    const delaysUs = []
    let senderDone = false
    let deadline = Infinity

    const send = async () => {
      const start = performance.now()
      for (let i = 0; i < count; i++) {
        // Paced at `rate`: invalidation i is due at start + i/rate; when
        // late, the next ones go out at once until caught up. Waits under a
        // millisecond (below timer resolution) yield to the pollers instead.
        const due = start + (i * 1_000) / rate
        for (let left = due - performance.now(); left > 0; left = due - performance.now()) {
          if (left >= 1) await sleep(Math.floor(left))
          else await yieldToEventLoop()
        }
        const t0 = performance.now()
        const deleted = sender.delete({ key: keys[i] })
        for (const list of pending) list.push([keys[i], t0])
        await deleted
      }
      senderDone = true
      deadline = performance.now() + OBSERVE_GRACE_MS
      return (performance.now() - start) / 1_000
    }

    // One poller per receiver: each pass gets every pending key once; a key
    // is seen when the value is gone or not version 1. Between passes the
    // poller yields to the event loop so bus messages and the sender run.
    const poll = async (receiver, list) => {
      while (!(senderDone && list.length === 0) && performance.now() < deadline) {
        // Take this pass's keys; keys handed over meanwhile land in `list`.
        const pass = list.splice(0, list.length)
        for (const entry of pass) {
          const value = await receiver.get({ key: entry[0] })
          if (value?.version !== 1) delaysUs.push((performance.now() - entry[1]) * 1_000)
          else list.push(entry)
        }
        await yieldToEventLoop()
      }
    }

    const [senderSeconds] = await Promise.all([send(), ...receivers.map((r, i) => poll(r, pending[i]))])

    await dropRunKeys(admin)
    return {
      delays_us: delaysUs,
      sent: count * receiverCount,
      observed: delaysUs.length,
      sender_seconds: senderSeconds,
      bus_check: busCheckResult,
    }
  } finally {
    await closeAll(bentos, admin)
  }
}

/** Runs `fn` over `items` with at most PREPOPULATE_CONCURRENCY calls in flight. */
async function inParallel(items, fn) {
  let next = 0
  const worker = async () => {
    while (next < items.length) await fn(items[next++])
  }
  await Promise.all(Array.from({ length: Math.min(PREPOPULATE_CONCURRENCY, items.length) }, worker))
}

// ---------------------------------------------------------------------------

function positive(name, text, integer) {
  const value = Number(text)
  if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw new Error(`${name} must be a positive ${integer ? 'integer' : 'number'}, got ${JSON.stringify(text)}`)
  }
  return value
}

async function main(argv) {
  const [mode, redisUrl, ...rest] = argv
  if (!redisUrl) throw new Error('usage: node bench.mjs hit|propagation|check <redis_url> ...')
  switch (mode) {
    case 'hit':
      return hit(redisUrl, positive('ops', rest[0], true))
    case 'propagation':
      return propagation(
        redisUrl,
        positive('receivers', rest[0], true),
        positive('rate', rest[1], false),
        positive('seconds', rest[2], false),
      )
    case 'check':
      return check(redisUrl)
    default:
      throw new Error(`unknown mode ${JSON.stringify(mode)}: expected hit, propagation or check`)
  }
}

try {
  const result = await main(process.argv.slice(2))
  process.stdout.write(`${JSON.stringify(result)}\n`)
} catch (error) {
  process.stderr.write(`${error?.stack ?? error}\n`)
  process.exitCode = 1
}
