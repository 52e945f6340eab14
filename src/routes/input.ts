/**
 * Reading and validating request input. The body is read as a stream with a byte cap, so a
 * chunked body or a lying Content-Length cannot get past the limit; then it must be JSON of the
 * right content type, then it must pass the route's schema. Each failure has its own status.
 */
import type { Context } from 'hono';
import type { z } from 'zod';
import { AppError, type FieldError } from '../errors.js';

export function fieldsOf(error: z.ZodError): FieldError[] {
  return error.issues.map((i) => ({ path: i.path.map(String).join('.') || '(root)', message: i.message }));
}

export function invalid(fields: FieldError[]): AppError {
  return new AppError(400, 'validation_failed', `Invalid input: ${fields.map((f) => f.path).join(', ')}.`, { fields });
}

export function parseWith<S extends z.ZodType>(schema: S, value: unknown): z.infer<S> {
  const result = schema.safeParse(value);
  if (!result.success) throw invalid(fieldsOf(result.error));
  return result.data;
}

/** The body of `req` as bytes, refusing (413) more than `limit` bytes however it is framed. */
export async function readBodyBytes(req: Request, limit: number): Promise<Uint8Array<ArrayBuffer>> {
  const declared = req.headers.get('content-length');
  const tooLarge = () => new AppError(413, 'payload_too_large', `The request body must not exceed ${limit} bytes.`);
  if (declared !== null && Number(declared) > limit) throw tooLarge();
  if (!req.body) return new Uint8Array();
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    let chunk: ReadableStreamReadResult<Uint8Array>;
    try {
      chunk = await reader.read();
    } catch (err) {
      // The client went away or broke the framing mid-body: its mistake, not the database's
      // (the stream's ECONNRESET would otherwise be mapped to 503 database_unavailable).
      throw new AppError(400, 'invalid_json', 'The request body ended before it was complete.', { cause: err });
    }
    const { done, value } = chunk;
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  const all = new Uint8Array(size);
  let offset = 0;
  for (const c of chunks) {
    all.set(c, offset);
    offset += c.byteLength;
  }
  return all;
}

/**
 * The request body, read once (size-capped) and kept on the context: the signature check, the
 * idempotency hash, the route's parser and any re-run of its transaction all see the same bytes.
 */
export async function takeBody(c: Context): Promise<Uint8Array<ArrayBuffer>> {
  const kept = c.get('rawBody' as never) as Uint8Array<ArrayBuffer> | undefined;
  if (kept) return kept;
  const bytes = await readBodyBytes(c.req.raw, c.get('bodyLimitBytes' as never) as number);
  c.set('rawBody' as never, bytes as never);
  return bytes;
}

function decodeUtf8(bytes: Uint8Array): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new AppError(400, 'invalid_json', 'The request body is not valid UTF-8.');
  }
}

/** The validated JSON body of `c`, or an AppError with 400/413/415. */
export async function jsonBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.infer<S>> {
  const type = c.req.header('content-type') ?? '';
  if (!/^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i.test(type)) {
    throw new AppError(415, 'unsupported_media_type', 'Send the body as JSON with Content-Type: application/json.');
  }
  const text = decodeUtf8(await takeBody(c));
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new AppError(400, 'invalid_json', 'The request body is not valid JSON.');
  }
  return parseWith(schema, value);
}
