/**
 * Typed JSON values, as Neon's proxy answers when a request does not send
 * `Neon-Raw-Text-Output: true` (`pg_text_to_json` in Neon's `proxy/src/serverless/json.rs`):
 * bool → true/false; int2/int4 → numbers; float4/float8 → numbers, except NaN and ±Infinity,
 * which stay strings; json/jsonb → parsed JSON; arrays → JSON arrays of their elements typed the
 * same way (bounds decoration dropped, NULL → null); everything else — int8, numeric, dates,
 * text, … — stays the Postgres text, so no precision is lost. The real driver always asks for
 * raw text and never sees this.
 */

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Turns one column's Postgres text (or null) into its JSON value. */
export type ToJson = (text: string | null) => Json;

const BOOL = 16;
const INT2 = 21;
const INT4 = 23;
const FLOAT4 = 700;
const FLOAT8 = 701;
const JSON_OID = 114;
const JSONB = 3802;

/**
 * Built-in array types (PostgreSQL 15's pg_type, category 'A', comma-delimited) → element type.
 * int2vector/oidvector are left out: their text is space-separated, not an array literal.
 * User-defined arrays (enums, domains, composites; OIDs ≥ 16384) stay text here, where Neon
 * would split them into arrays of strings: the proxy does not look types up in the catalog.
 */
const ARRAY_ELEMENT = new Map<number, number>(
  (
    '143:142,199:114,210:71,270:75,271:5069,272:81,273:83,629:628,651:650,719:718,775:774,791:790,1000:16,1001:17,1002:18,' +
    '1003:19,1005:21,1006:22,1007:23,1008:24,1009:25,1010:27,1011:28,1012:29,1013:30,1014:1042,1015:1043,1016:20,1017:600,' +
    '1018:601,1019:602,1021:700,1022:701,1027:604,1028:26,1034:1033,1040:829,1041:869,1115:1114,1182:1082,1183:1083,' +
    '1185:1184,1187:1186,1231:1700,1263:2275,1270:1266,1561:1560,1563:1562,2201:1790,2207:2202,2208:2203,2209:2204,' +
    '2210:2205,2211:2206,2949:2970,2951:2950,3221:3220,3643:3614,3644:3642,3645:3615,3735:3734,3770:3769,3807:3802,' +
    '3905:3904,3907:3906,3909:3908,3911:3910,3913:3912,3927:3926,4073:4072,4090:4089,4097:4096,4192:4191,5039:5038,' +
    '6150:4451,6151:4532,6152:4533,6153:4534,6155:4535,6157:4536'
  )
    .split(',')
    .map((pair) => pair.split(':').map(Number) as [number, number]),
);

/** The converter for a column of type `typeId`. */
export function jsonConverter(typeId: number): ToJson {
  const element = ARRAY_ELEMENT.get(typeId);
  if (element !== undefined) return (text) => (text === null ? null : parseArray(text, element));
  return (text) => (text === null ? null : scalar(text, typeId));
}

function scalar(text: string, typeId: number): Json {
  switch (typeId) {
    case BOOL:
      return text === 't';
    case INT2:
    case INT4:
      return Number(text);
    case FLOAT4:
    case FLOAT8: {
      const n = Number(text);
      // JSON has no NaN or Infinity; Neon keeps them as the strings Postgres wrote.
      return Number.isFinite(n) ? n : text;
    }
    case JSON_OID:
    case JSONB:
      return JSON.parse(text) as Json;
    default:
      return text;
  }
}

/** Parses an array literal such as `{1,NULL,"a b"}`, `{{t,f},{f,t}}` or `[0:1]={5,6}`. */
function parseArray(text: string, element: number): Json {
  let literal = text;
  // Bounds decoration has no JSON form; Neon drops it too.
  if (literal.startsWith('[')) literal = literal.slice(literal.indexOf('=') + 1);
  const state = { text: literal.trimStart(), at: 0 };
  return parseLevel(state, element);
}

interface Cursor {
  text: string;
  at: number;
}

function parseLevel(c: Cursor, element: number): Json[] {
  if (c.text[c.at] !== '{') throw new Error('malformed array literal');
  c.at++;
  const items: Json[] = [];
  if (c.text[c.at] === '}') {
    c.at++;
    return items;
  }
  for (;;) {
    items.push(parseItem(c, element));
    const next = c.text[c.at++];
    if (next === '}') return items;
    if (next !== ',') throw new Error('malformed array literal');
  }
}

function parseItem(c: Cursor, element: number): Json {
  if (c.text[c.at] === '{') return parseLevel(c, element);
  if (c.text[c.at] === '"') {
    let value = '';
    for (c.at++; c.text[c.at] !== '"'; c.at++) {
      if (c.at >= c.text.length) throw new Error('malformed array literal');
      if (c.text[c.at] === '\\') c.at++;
      value += c.text[c.at];
    }
    c.at++;
    return scalar(value, element);
  }
  let end = c.at;
  while (end < c.text.length && c.text[end] !== ',' && c.text[end] !== '}') end++;
  const item = c.text.slice(c.at, end).trim();
  c.at = end;
  // Unquoted NULL is SQL null; a quoted "NULL" (above) is the string.
  return item === 'NULL' ? null : scalar(item, element);
}
