/** The fitness API on Netlify Edge (built into dist/netlify/edge-functions/poolgate.js). */
import { createEdgeFunction } from '../../runtime/netlify-edge.js';
import { fitness } from '../app.js';

export default createEdgeFunction(fitness);
