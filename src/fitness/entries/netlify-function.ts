/** The fitness API's Node function on Netlify (built into dist/netlify/functions/gateway.mjs), the target of signed forwards. */
import { createNodeFunction } from '../../runtime/netlify-function.js';
import { fitness } from '../app.js';

export default createNodeFunction(fitness);
