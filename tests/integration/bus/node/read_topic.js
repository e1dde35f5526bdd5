// Reads `count` messages of `topic` from the beginning, decodes them through the schema registry
// (Confluent wire format, Avro), and prints one JSON line per message. Decimals are printed as the
// hex of their Avro bytes (unscaled two's complement) so that the Python side checks them exactly.
const { Kafka, logLevel } = require("kafkajs");
const { SchemaRegistry } = require("@kafkajs/confluent-schema-registry");

const [brokers, registryUrl, topic, countText] = process.argv.slice(2);
const count = Number(countText);

async function main() {
  const kafka = new Kafka({ clientId: "k2-node-check", brokers: brokers.split(","), logLevel: logLevel.ERROR });
  const registry = new SchemaRegistry({ host: registryUrl });
  const consumer = kafka.consumer({ groupId: `node-${topic}` });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  let seen = 0;
  const timer = setTimeout(() => { console.error("timeout"); process.exit(2); }, 60000);
  await new Promise((resolve) => {
    consumer.run({
      eachMessage: async ({ partition, message }) => {
        const r = await registry.decode(message.value);
        const out = {
          key: message.key.toString(),
          partition,
          message_id: r.message_id,
          symbol: r.symbol,
          side: r.side,
          price_hex: Buffer.from(r.price).toString("hex"),
          quantity_hex: Buffer.from(r.quantity).toString("hex"),
          timestamp_us: Number(r.timestamp),
          vendor_data: r.vendor_data,
          trade_conditions: r.trade_conditions,
        };
        process.stdout.write(JSON.stringify(out) + "\n");
        seen += 1;
        if (seen >= count) resolve();
      },
    });
  });
  clearTimeout(timer);
  await consumer.disconnect();
}

main().catch((err) => { console.error(err); process.exit(1); });
